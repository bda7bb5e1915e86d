#include "fluxbatch/models/weight_map_nf4.h"

#include "fluxbatch/core/error.h"
#include "fluxbatch/nn/weights.h"

#include <ATen/ATen.h>

namespace fluxbatch::models {
namespace {

// Blocks [first, first + count) of w's absmax statistics, carried over into `part`.
void take_blocks(const quant::Nf4Tensor& w, const at::Tensor& resolved, int64_t first, int64_t count,
                 quant::Nf4Tensor* part) {
  if (resolved.defined()) {
    part->absmax = resolved.narrow(0, first, count);
  } else if (!w.is_nested()) {
    part->absmax = w.absmax.narrow(0, first, count);
  } else {
    const int64_t nb = w.nested_blocksize;
    part->q8 = w.q8.narrow(0, first, count);
    part->nested_absmax = w.nested_absmax.narrow(0, first / nb, (count + nb - 1) / nb);
    part->nested_quant_map = w.nested_quant_map;
    part->offset = w.offset;
    part->nested_blocksize = nb;
  }
}

}  // namespace

std::vector<quant::Nf4Tensor> split_nf4_rows(const quant::Nf4Tensor& w, const std::vector<int64_t>& rows,
                                             const std::string& what) {
  w.validate(what);
  int64_t total = 0;
  for (int64_t r : rows) total += r;
  FLUXBATCH_CHECK(w.shape.size() == 2 && w.shape[0] == total, ModelError,
                  what + ": NF4 shape " + nn::shape_string(w.shape) + " is not [" + std::to_string(total) +
                      ", in] (the fused rows " + nn::shape_string(rows) + " of the detected configuration)");
  const int64_t cols = w.shape[1];
  // Where each part starts, in values; every start must fall on a block boundary.
  bool nested_aligned = w.is_nested();
  int64_t start = 0;
  for (int64_t r : rows) {
    FLUXBATCH_CHECK(r > 0 && start % w.blocksize == 0, ModelError,
                    what + ": rows " + nn::shape_string(rows) + " of an NF4 weight with " + std::to_string(cols) +
                        " columns do not fall on " + std::to_string(w.blocksize) +
                        "-value blocks, so it cannot be split exactly");
    if (w.is_nested() && (start / w.blocksize) % w.nested_blocksize != 0) nested_aligned = false;
    start += r * cols;
  }
  const at::Tensor resolved = w.is_nested() && !nested_aligned ? quant::nf4_block_absmax(w) : at::Tensor();
  std::vector<quant::Nf4Tensor> parts;
  start = 0;
  for (int64_t r : rows) {
    quant::Nf4Tensor part;
    part.shape = {r, cols};
    part.blocksize = w.blocksize;
    part.dtype = w.dtype;
    const int64_t numel = r * cols;
    // start is a multiple of the (even) blocksize, so the part begins on a whole byte.
    part.packed = w.packed.narrow(0, start / 2, (numel + 1) / 2);
    take_blocks(w, resolved, start / w.blocksize, part.n_blocks(), &part);
    part.validate(what);
    parts.push_back(std::move(part));
    start += numel;
  }
  return parts;
}

quant::Nf4Tensor concat_nf4_rows(const std::vector<quant::Nf4Tensor>& parts, const std::string& what) {
  FLUXBATCH_CHECK(!parts.empty(), ModelError, what + ": nothing to concatenate");
  const quant::Nf4Tensor& first = parts.front();
  quant::Nf4Tensor out;
  out.blocksize = first.blocksize;
  out.dtype = first.dtype;
  int64_t rows = 0;
  bool shared_nested = first.is_nested();
  std::vector<at::Tensor> packed, absmax, q8, nested;
  for (size_t i = 0; i < parts.size(); ++i) {
    const quant::Nf4Tensor& p = parts[i];
    p.validate(what);
    FLUXBATCH_CHECK(p.shape.size() == 2 && p.shape[1] == first.shape[1] && p.blocksize == first.blocksize &&
                        p.dtype == first.dtype,
                    ModelError, what + ": NF4 parts of shape " + nn::shape_string(p.shape) + " and " +
                                     nn::shape_string(first.shape) + " (or blocksize / dtype) cannot be stacked");
    FLUXBATCH_CHECK(i + 1 == parts.size() || p.numel() % p.blocksize == 0, ModelError,
                    what + ": an NF4 part of shape " + nn::shape_string(p.shape) + " is not a whole number of blocks");
    rows += p.shape[0];
    packed.push_back(p.packed);
    shared_nested = shared_nested && p.is_nested() && p.offset == first.offset &&
                    p.nested_blocksize == first.nested_blocksize &&
                    at::equal(p.nested_quant_map, first.nested_quant_map) &&
                    (i + 1 == parts.size() || p.n_blocks() % p.nested_blocksize == 0);
  }
  out.shape = {rows, first.shape[1]};
  out.packed = at::cat(packed, 0);
  for (const auto& p : parts) {
    if (shared_nested) {
      q8.push_back(p.q8);
      nested.push_back(p.nested_absmax);
    } else {
      absmax.push_back(quant::nf4_block_absmax(p));
    }
  }
  if (shared_nested) {
    out.q8 = at::cat(q8, 0);
    out.nested_absmax = at::cat(nested, 0);
    out.nested_quant_map = first.nested_quant_map;
    out.offset = first.offset;
    out.nested_blocksize = first.nested_blocksize;
  } else {
    out.absmax = at::cat(absmax, 0);
  }
  out.validate(what);
  return out;
}

}  // namespace fluxbatch::models
