// Input checks, the row layout and the outputs of the Huber kernels
// (device-neutral: the CPU and GPU kernels start with the same Start* call).
//
// y_true and y_pred have one shape [..., D] (rank >= 1), seen as N rows x D
// with 64-bit indexing; threshold is a float64 scalar; the upstream gradient of
// HuberPerSample has shape [...]; HuberWeightedTotal's 1-D weights have
// N*D entries (one per element), N (one per row) or none (every weight 1).
#ifndef FASTCUSTOM_HUBER_KERNELS_H_
#define FASTCUSTOM_HUBER_KERNELS_H_

#include <cstdint>

#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/tensor.h"
#include "tensorflow/core/framework/tensor_shape.h"
#include "tensorflow/core/platform/errors.h"

namespace fastcustom {

struct RowLayout {
  int64_t rows = 0;                   // N: the product of all but the last dimension
  int64_t depth = 0;                  // D: the last dimension
  tensorflow::TensorShape row_shape;  // y_pred.shape[:-1]
};

inline absl::Status GetRowLayout(const tensorflow::Tensor& y_true,
                                 const tensorflow::Tensor& y_pred,
                                 const tensorflow::Tensor& threshold, RowLayout* layout) {
  if (y_true.shape() != y_pred.shape() || y_pred.dims() < 1) {
    return tensorflow::errors::InvalidArgument(
        "y_true and y_pred must have the same shape of rank >= 1, got y_true shape ",
        y_true.shape().DebugString(), " and y_pred shape ", y_pred.shape().DebugString());
  }
  if (threshold.dims() != 0) {
    return tensorflow::errors::InvalidArgument("threshold must be a scalar, got shape ",
                                               threshold.shape().DebugString());
  }
  layout->depth = y_pred.dim_size(y_pred.dims() - 1);
  layout->row_shape = y_pred.shape();
  layout->row_shape.RemoveLastDims(1);
  layout->rows = layout->row_shape.num_elements();
  return absl::OkStatus();
}

inline absl::Status CheckUpstream(const tensorflow::Tensor& grad, const RowLayout& layout) {
  if (grad.shape() != layout.row_shape) {
    return tensorflow::errors::InvalidArgument(
        "grad must have shape y_pred.shape[:-1] = ", layout.row_shape.DebugString(),
        ", got ", grad.shape().DebugString());
  }
  return absl::OkStatus();
}

enum class WeightMode { kNone, kPerRow, kPerElement };

inline absl::Status GetWeightMode(const tensorflow::Tensor& weights, const RowLayout& layout,
                                  WeightMode* mode) {
  const int64_t size = weights.NumElements();
  if (weights.dims() == 1 && size == layout.rows * layout.depth) {
    *mode = WeightMode::kPerElement;
  } else if (weights.dims() == 1 && size == layout.rows) {
    *mode = WeightMode::kPerRow;
  } else if (weights.dims() == 1 && size == 0) {
    *mode = WeightMode::kNone;
  } else {
    return tensorflow::errors::InvalidArgument(
        "weights must be 1-D with 0, N = ", layout.rows, " or N*D = ",
        layout.rows * layout.depth, " entries, got shape ", weights.shape().DebugString());
  }
  return absl::OkStatus();
}

// HuberPerSample: the inputs checked, the output loss [...] allocated.
inline absl::Status StartPerSample(tensorflow::OpKernelContext* ctx, RowLayout* layout,
                                   tensorflow::Tensor** loss) {
  TF_RETURN_IF_ERROR(GetRowLayout(ctx->input(0), ctx->input(1), ctx->input(2), layout));
  return ctx->allocate_output(0, layout->row_shape, loss);
}

// HuberPerSampleGrad: the inputs (and the upstream grad [...]) checked, the output
// grad_pred [..., D] allocated.
inline absl::Status StartPerSampleGrad(tensorflow::OpKernelContext* ctx, RowLayout* layout,
                                       tensorflow::Tensor** grad_pred) {
  TF_RETURN_IF_ERROR(GetRowLayout(ctx->input(0), ctx->input(1), ctx->input(2), layout));
  TF_RETURN_IF_ERROR(CheckUpstream(ctx->input(3), *layout));
  return ctx->allocate_output(0, ctx->input(1).shape(), grad_pred);
}

// HuberMeanWithGrad: the inputs checked, the scalar mean and grad_pred [..., D] allocated.
inline absl::Status StartMeanWithGrad(tensorflow::OpKernelContext* ctx, RowLayout* layout,
                                      tensorflow::Tensor** mean, tensorflow::Tensor** grad_pred) {
  TF_RETURN_IF_ERROR(GetRowLayout(ctx->input(0), ctx->input(1), ctx->input(2), layout));
  TF_RETURN_IF_ERROR(ctx->allocate_output(0, tensorflow::TensorShape({}), mean));
  return ctx->allocate_output(1, ctx->input(1).shape(), grad_pred);
}

// HuberMeanGrad: `stored` (input 3) shaped like y_pred, `grad` (input 4) a scalar.
inline absl::Status CheckMeanGrad(tensorflow::OpKernelContext* ctx) {
  RowLayout layout;
  TF_RETURN_IF_ERROR(GetRowLayout(ctx->input(0), ctx->input(1), ctx->input(2), &layout));
  if (ctx->input(3).shape() != ctx->input(1).shape() || ctx->input(4).dims() != 0) {
    return tensorflow::errors::InvalidArgument(
        "stored must have y_pred's shape ", ctx->input(1).shape().DebugString(),
        " and grad must be a scalar, got ", ctx->input(3).shape().DebugString(), " and ",
        ctx->input(4).shape().DebugString());
  }
  return absl::OkStatus();
}

// HuberWeightedTotal: the inputs checked, the weights' mode found, the two float64
// scalar outputs (total, count) allocated.
inline absl::Status StartWeightedTotal(tensorflow::OpKernelContext* ctx, RowLayout* layout,
                                       WeightMode* mode, tensorflow::Tensor** total,
                                       tensorflow::Tensor** count) {
  TF_RETURN_IF_ERROR(GetRowLayout(ctx->input(0), ctx->input(1), ctx->input(2), layout));
  TF_RETURN_IF_ERROR(GetWeightMode(ctx->input(3), *layout, mode));
  TF_RETURN_IF_ERROR(ctx->allocate_output(0, tensorflow::TensorShape({}), total));
  return ctx->allocate_output(1, tensorflow::TensorShape({}), count);
}

// The `threshold` input (a float64 scalar in host memory, checked by GetRowLayout).
inline double Threshold(tensorflow::OpKernelContext* ctx) {
  return ctx->input(2).scalar<double>()();
}

}  // namespace fastcustom

#endif  // FASTCUSTOM_HUBER_KERNELS_H_
