#pragma once
// Launch shapes and thresholds of the MSDA CUDA kernels, in one place. Each was chosen by timing the
// alternatives on an H100 (docs/perf-history.md lists what was tried); a change here is a
// performance change only, never a correctness one: every kernel is correct for any value allowed by
// the static_asserts below.
#include <cstddef>

namespace codetr {
namespace msda {
namespace tuning {

// Forward and per-sample backward: 256-thread blocks (1024-thread blocks were slower on the encoder
// and left the 900-query decoder too few blocks).
constexpr int kForwardThreadsPerBlock = 256;
constexpr int kBackwardThreadsPerBlock = 256;
// Bytes of value per lane and bilinear corner in backward_kernel (one 16-byte load per corner).
constexpr size_t kBackwardLaneBytes = 16;

// Decoder backward by output tiles (backward_tiles.cuh).
constexpr int kTileThreads = 256;
constexpr int kTileMaxSamples = 16384;      // Q*P per (b, h, level) up to which tiles are considered
constexpr int kTileAccumFloats = 8192;      // fp32 sums per block (in registers): tile pixels = this / D
constexpr int kTileMaxHits = 512;           // expected corner hits per tile up to which a level is tiled
constexpr int kTileMaxTilesPerHead = 8192;  // the scatter keeps a (b, h)'s bin offsets in shared memory

// Encoder backward by per-block window sums (backward_encoder.cuh).
constexpr int kEncoderSamples = 64;         // samples (queries x points) per block
constexpr int kEncoderLanes = 2;            // lanes per sample: 1, 2 or 4
constexpr int kEncoderWindowMargin = 6;     // window margin in pixels of the sampled level
constexpr int kEncoderWindowSlots = 1024;   // window pixels per level
constexpr int kEncoderGradOutBytes = 16384;
static_assert(kEncoderLanes == 1 || kEncoderLanes == 2 || kEncoderLanes == 4, "a sample's 4 corners split over its lanes");

// backward_cuda runs the decoder's tile binning and tile kernel on the caller's side stream, beside
// backward_kernel (the two are each limited by registers and rarely share an SM otherwise).
constexpr bool kUseSideStream = true;

}  // namespace tuning
}  // namespace msda
}  // namespace codetr
