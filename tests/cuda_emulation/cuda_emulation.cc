// The runtime of the CPU emulation declared in cuda_emulation.h: a block's
// threads are ucontext fibers that run until they finish or wait at a
// barrier; the scheduler releases a warp when all 32 of its lanes wait at a
// shuffle, the block when all its threads wait at __syncthreads, and fails
// the launch when a barrier is reached by only some of them. Warps run ahead
// of each other, in a fresh order for every block. Plus the tracked "device"
// memory that every __ldg is checked against, and a C API for the tests.
#include "cuda_emulation.h"

#include <ucontext.h>

#include <cstdio>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

uint3 threadIdx, blockIdx;
dim3 blockDim, gridDim;

namespace cuda_emulation {
namespace {

constexpr unsigned kWarp = 32;
constexpr unsigned kMaxThreads = 1024;
constexpr size_t kStackBytes = 64 << 10;

enum class State { kReady, kAtShuffle, kAtSyncThreads, kExited };

struct Thread {
  ucontext_t context;
  State state;
  unsigned shuffles;  // shuffles done: their parity picks the exchange buffer
};

// The block being run.
struct Block {
  std::vector<Thread> threads;
  std::vector<uint64_t> exchange[2];  // each thread's value of a shuffle, by its parity
  const std::function<void()>* body = nullptr;
  ucontext_t scheduler;
  unsigned current = 0;
};

Block* running = nullptr;
std::vector<std::unique_ptr<char[]>> stacks;  // one per thread, kept across launches
std::map<uintptr_t, uintptr_t> tracked;       // device memory: start -> end
uint64_t order_state = 0x9E3779B97F4A7C15;  // xorshift64: the warps' order
bool launch_failed = false;                   // stop running this launch's blocks
cudaError_t pending = cudaSuccess;            // the first error cudaGetLastError has not taken
cudaError_t failed_with = cudaSuccess;        // the latest failure ...
std::string failure;                          // ... and what it was

void Fail(cudaError_t code, const std::string& what) {
  if (launch_failed) return;
  launch_failed = true;
  if (pending == cudaSuccess) pending = code;
  failed_with = code;
  failure = what + " (block " + std::to_string(blockIdx.x) + ", thread " +
            std::to_string(threadIdx.x) + ")";
}

Thread& Current() { return running->threads[running->current]; }

void Wait(State state) {
  Current().state = state;
  swapcontext(&Current().context, &running->scheduler);
}

void ThreadMain() {
  (*running->body)();
  Wait(State::kExited);  // never resumed
}

// Runs warp `w` as far as it goes: its ready lanes until each waits or exits,
// releasing the warp each time all 32 lanes wait at a shuffle. Returns false
// (and fails the launch) when only some lanes wait at a shuffle.
bool AdvanceWarp(Block& block, unsigned w) {
  for (;;) {
    unsigned at_shuffle = 0;
    for (unsigned t = w * kWarp; t < (w + 1) * kWarp; ++t) {
      if (block.threads[t].state == State::kReady) {
        block.current = t;
        threadIdx = make_uint3(t, 0, 0);
        swapcontext(&block.scheduler, &block.threads[t].context);
      }
      at_shuffle += block.threads[t].state == State::kAtShuffle;
    }
    if (at_shuffle == 0) return true;
    if (at_shuffle < kWarp) {
      Fail(cudaErrorLaunchFailure, "a warp shuffle that not every lane of the warp reaches");
      return false;
    }
    for (unsigned t = w * kWarp; t < (w + 1) * kWarp; ++t) block.threads[t].state = State::kReady;
  }
}

// One block: each warp in turn runs ahead as far as it can (to a
// __syncthreads or its end), in a pseudo-random order drawn anew for each
// block, so a missing barrier between warps shows as a wrong or varying
// result. Then the block's __syncthreads is released.
void RunBlock(Block& block) {
  const unsigned n = static_cast<unsigned>(block.threads.size()), warps = n / kWarp;
  std::vector<unsigned> order(warps);
  for (unsigned i = 0; i < warps; ++i) order[i] = i;
  for (unsigned i = warps; i > 1; --i) {  // Fisher-Yates
    order_state ^= order_state << 13;
    order_state ^= order_state >> 7;
    order_state ^= order_state << 17;
    std::swap(order[i - 1], order[order_state % i]);
  }
  for (;;) {
    for (unsigned w : order) {
      if (!AdvanceWarp(block, w)) return;
    }
    unsigned exited = 0, at_sync = 0;
    for (const Thread& t : block.threads) {
      exited += t.state == State::kExited;
      at_sync += t.state == State::kAtSyncThreads;
    }
    if (exited == n) return;
    if (at_sync != n) {
      Fail(cudaErrorLaunchFailure, "a __syncthreads that not every thread of the block reaches");
      return;
    }
    for (Thread& t : block.threads) t.state = State::kReady;
  }
}

}  // namespace

cudaError_t RunGrid(unsigned blocks, unsigned threads, const std::function<void()>& body) {
  launch_failed = false;
  if (blocks == 0 || threads == 0 || threads > kMaxThreads || threads % kWarp != 0) {
    Fail(cudaErrorInvalidConfiguration, "launch of " + std::to_string(blocks) + " x " +
                                            std::to_string(threads) +
                                            " threads (the emulation runs whole warps, at most 1024)");
    return failed_with;
  }
  while (stacks.size() < threads) stacks.emplace_back(new char[kStackBytes]);
  Block block;
  block.threads.resize(threads);
  for (auto& values : block.exchange) values.resize(threads);
  block.body = &body;
  running = &block;
  gridDim = dim3(blocks, 1, 1);
  blockDim = dim3(threads, 1, 1);
  for (unsigned b = 0; b < blocks && !launch_failed; ++b) {
    blockIdx = make_uint3(b, 0, 0);
    for (unsigned t = 0; t < threads; ++t) {
      Thread& thread = block.threads[t];
      thread.state = State::kReady;
      thread.shuffles = 0;
      getcontext(&thread.context);
      thread.context.uc_stack.ss_sp = stacks[t].get();
      thread.context.uc_stack.ss_size = kStackBytes;
      thread.context.uc_link = nullptr;
      makecontext(&thread.context, ThreadMain, 0);
    }
    RunBlock(block);
  }
  running = nullptr;
  return launch_failed ? failed_with : cudaSuccess;
}

bool LoadAllowed(const void* p, size_t bytes) {
  const uintptr_t address = reinterpret_cast<uintptr_t>(p);
  const auto next = tracked.upper_bound(address);
  const bool aligned = address % bytes == 0;
  if (aligned && next != tracked.begin() && address + bytes <= std::prev(next)->second) return true;
  char what[96];
  std::snprintf(what, sizeof(what), aligned ? "%zu-byte load at %p outside every tracked buffer"
                                            : "misaligned %zu-byte load at %p", bytes, p);
  Fail(aligned ? cudaErrorIllegalAddress : cudaErrorMisalignedAddress, what);
  return false;
}

void SyncThreads() { Wait(State::kAtSyncThreads); }

uint64_t WarpExchange(unsigned mask, uint64_t bits, int src_lane) {
  if (mask != 0xffffffffu) Fail(cudaErrorLaunchFailure, "a shuffle with a partial lane mask");
  const unsigned me = running->current, warp_base = me / kWarp * kWarp;
  // Two buffers by parity: a lane can only write this buffer again two shuffles
  // on, after every lane of the warp has passed the next one, so has read this.
  std::vector<uint64_t>& values = running->exchange[Current().shuffles++ % 2];
  values[me] = bits;
  Wait(State::kAtShuffle);  // every lane has written its value
  return values[warp_base + static_cast<unsigned>(src_lane)];
}

cudaError_t TakeLastError() {
  const cudaError_t e = pending;
  pending = cudaSuccess;
  return e;
}

const char* ErrorString(cudaError_t code) {
  if (code != cudaSuccess && code == failed_with) return failure.c_str();
  switch (code) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    default: return "emulated CUDA error";
  }
}

}  // namespace cuda_emulation

extern "C" {

// [p, p + bytes) is device memory from now on (bytes may be 0).
void cuda_emulation_track(const void* p, size_t bytes) {
  const uintptr_t start = reinterpret_cast<uintptr_t>(p);
  cuda_emulation::tracked[start] = start + bytes;
}

// The buffer tracked at p is freed.
void cuda_emulation_forget(const void* p) { cuda_emulation::tracked.erase(reinterpret_cast<uintptr_t>(p)); }

}  // extern "C"
