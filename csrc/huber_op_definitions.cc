// The fused Huber ops' definitions (REGISTER_OP: signatures and shape functions);
// their kernels are registered by huber_kernels_cpu.cc (every op) and
// huber_kernels_gpu.cu.cc (the first three, GOOGLE_CUDA builds).
//
// y_true, y_pred: [..., D], seen as N rows x D;  e = y_true - y_pred;  h and its
// derivative as stated in huber_math.h (t = threshold).
//
//   HuberPerSample:      loss[r]         = (1/D) sum_j h(e[r, j])         shape [...]
//   HuberPerSampleGrad:  grad_pred[r, j] = grad[r] / D * clamp(-e[r, j], -threshold, threshold)
//   HuberMeanWithGrad:   mean = (1/(N D)) sum_rj h(e[r, j]) (= the mean of HuberPerSample),
//                        grad_pred[r, j] = clamp(-e[r, j], -threshold, threshold) / (N D), both in
//                        one pass (CPU; float, double): d mean / d y_pred, stored for
//   HuberMeanGrad:       grad_pred = grad * stored (a scalar grad; no copy when it is 1).
//   HuberWeightedTotal:  total = sum w h, count = sum w (float64 scalars), where
//                        weights has N*D entries (per element), N (per row, counting
//                        once per element of its row) or 0 (every w = 1).
#include "tensorflow/core/framework/common_shape_fns.h"
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/shape_inference.h"

namespace fastcustom {
namespace {

using ::tensorflow::shape_inference::InferenceContext;
using ::tensorflow::shape_inference::ShapeHandle;

// y_true and y_pred merged into one shape of rank >= 1; threshold a scalar.
absl::Status PairShape(InferenceContext* c, ShapeHandle* pair) {
  ShapeHandle unused;
  TF_RETURN_IF_ERROR(c->WithRankAtLeast(c->input(1), 1, pair));
  TF_RETURN_IF_ERROR(c->Merge(c->input(0), *pair, pair));
  return c->WithRank(c->input(2), 0, &unused);
}

absl::Status PerSampleShape(InferenceContext* c) {
  ShapeHandle pair, rows;
  TF_RETURN_IF_ERROR(PairShape(c, &pair));
  TF_RETURN_IF_ERROR(c->Subshape(pair, 0, -1, &rows));
  c->set_output(0, rows);
  return absl::OkStatus();
}

absl::Status PerSampleGradShape(InferenceContext* c) {
  ShapeHandle pair, rows, unused;
  TF_RETURN_IF_ERROR(PairShape(c, &pair));
  TF_RETURN_IF_ERROR(c->Subshape(pair, 0, -1, &rows));
  TF_RETURN_IF_ERROR(c->Merge(c->input(3), rows, &unused));
  c->set_output(0, pair);
  return absl::OkStatus();
}

absl::Status MeanWithGradShape(InferenceContext* c) {
  ShapeHandle pair;
  TF_RETURN_IF_ERROR(PairShape(c, &pair));
  c->set_output(0, c->Scalar());
  c->set_output(1, pair);
  return absl::OkStatus();
}

absl::Status MeanGradShape(InferenceContext* c) {
  ShapeHandle pair, stored, unused;
  TF_RETURN_IF_ERROR(PairShape(c, &pair));
  TF_RETURN_IF_ERROR(c->Merge(c->input(3), pair, &stored));
  TF_RETURN_IF_ERROR(c->WithRank(c->input(4), 0, &unused));
  c->set_output(0, stored);
  return absl::OkStatus();
}

absl::Status WeightedTotalShape(InferenceContext* c) {
  ShapeHandle pair, unused;
  TF_RETURN_IF_ERROR(PairShape(c, &pair));
  TF_RETURN_IF_ERROR(c->WithRank(c->input(3), 1, &unused));
  c->set_output(0, c->Scalar());
  c->set_output(1, c->Scalar());
  return absl::OkStatus();
}

}  // namespace

REGISTER_OP("FastCustom>HuberPerSample")
    .Input("y_true: T")
    .Input("y_pred: T")
    .Input("threshold: double")
    .Output("loss: T")
    .Attr("T: {half, bfloat16, float, double}")
    .SetShapeFn(PerSampleShape)
    .Doc("Per-sample Huber loss: the mean of h(y_true - y_pred) over the last axis.");

REGISTER_OP("FastCustom>HuberPerSampleGrad")
    .Input("y_true: T")
    .Input("y_pred: T")
    .Input("threshold: double")
    .Input("grad: T")
    .Output("grad_pred: T")
    .Attr("T: {half, bfloat16, float, double}")
    .SetShapeFn(PerSampleGradShape)
    .Doc("d/dy_pred of sum(grad * HuberPerSample(y_true, y_pred, threshold)).");

REGISTER_OP("FastCustom>HuberMeanWithGrad")
    .Input("y_true: T")
    .Input("y_pred: T")
    .Input("threshold: double")
    .Output("mean: T")
    .Output("grad_pred: T")
    .Attr("T: {float, double}")
    .SetShapeFn(MeanWithGradShape)
    .Doc("The mean of h(y_true - y_pred) over every element, and its gradient w.r.t. "
         "y_pred, in one pass over the inputs.");

// y_true, y_pred and threshold are not read: they are there for this op's own gradient.
REGISTER_OP("FastCustom>HuberMeanGrad")
    .Input("y_true: T")
    .Input("y_pred: T")
    .Input("threshold: double")
    .Input("stored: T")
    .Input("grad: T")
    .Output("grad_pred: T")
    .Attr("T: {float, double}")
    .SetShapeFn(MeanGradShape)
    .Doc("grad * stored, where stored is HuberMeanWithGrad's grad_pred output.");

REGISTER_OP("FastCustom>HuberWeightedTotal")
    .Input("y_true: T")
    .Input("y_pred: T")
    .Input("threshold: double")
    .Input("weights: T")
    .Output("total: double")
    .Output("count: double")
    .Attr("T: {half, bfloat16, float, double}")
    .SetShapeFn(WeightedTotalShape)
    .Doc("(sum of w * h(y_true - y_pred), sum of w) over every element, in float64.");

}  // namespace fastcustom
