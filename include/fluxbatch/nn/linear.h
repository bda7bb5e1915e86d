// A Linear layer whose parameters are created uninitialised with the caller's dtype and device, so a
// 12B-parameter model is allocated once, where it will run, and then filled by nn::load_state.
// It can instead hold its weight as NF4 (bitsandbytes Linear4bit): the dense weight is then dropped
// and only ever exists, per call, in a scratch buffer shared by every NF4 layer of the model. For
// --compute fp8 it runs fp8 GEMMs: with its weight held as e4m3 per output channel (set_fp8), or with its
// NF4 weight turned into such an fp8 copy at each call (compute_in_fp8), its inputs quantized per row.
#pragma once
#include "fluxbatch/nn/lora.h"
#include "fluxbatch/ops/fp8_linear.h"
#include "fluxbatch/quant/fp8_format.h"
#include "fluxbatch/quant/nf4_format.h"

#include <ATen/core/Tensor.h>
#include <c10/core/TensorOptions.h>
#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace fluxbatch::nn {

// What a Linear reads: dense rows, or rows its producer already quantized to fp8 (for takes_fp8() layers,
// e.g. the modulated LayerNorm before the attention projections).
struct LinearInput {
  at::Tensor dense;  // [B, ..., in]; undefined when fp8
  ops::Fp8Rows fp8;  // data undefined when dense

  bool is_fp8() const { return fp8.data.defined(); }
  const at::Tensor& rows() const { return is_fp8() ? fp8.data : dense; }  // for sizes
};

class LinearImpl : public torch::nn::Module {
 public:
  // Registers "weight" [out, in] and, when `bias`, "bias" [out] (torch.nn.Linear's names).
  LinearImpl(int64_t in_features, int64_t out_features, bool bias = true,
             const at::TensorOptions& options = at::TensorOptions());

  // x: [..., in] -> [..., out]
  at::Tensor forward(const at::Tensor& x) const;
  // GELU_tanh(forward(x)), the activation fused into the GEMM where the kernel mode allows
  // (ops::linear_gelu_tanh_out). x: [B, ..., in] -> [B, ..., out]
  at::Tensor forward_gelu_tanh(const at::Tensor& x) const;
  // forward(x) (or, with gelu_tanh, forward_gelu_tanh(x)) written into `out`: [B, ..., out] whose rows
  // of one image form a matrix with unit column stride, e.g. a token range of a joint sequence or a
  // column slice of a wider buffer (ops::per_image_linear_out). NF4 weights always take the dequantize
  // + GEMM path here (token rows), never the one-row GEMV.
  void forward_out(const at::Tensor& x, at::Tensor out, bool gelu_tanh = false) const;
  // Inputs the kernel that produced them already quantized to fp8 rows (takes_fp8() layers only):
  // x: [B, ..., in] -> [B, ..., out] in out_dtype.
  at::Tensor forward(const ops::Fp8Rows& x, at::ScalarType out_dtype) const;
  // Either input form (dense output in out_dtype for fp8 rows, the input's dtype otherwise); the _out
  // form writes into `out` as forward_out does.
  at::Tensor forward(const LinearInput& x, at::ScalarType out_dtype) const;
  void forward_out(const LinearInput& x, at::Tensor out, bool gelu_tanh = false) const;

  int64_t in_features() const { return in_features_; }
  int64_t out_features() const { return out_features_; }

  // Replaces the dense weight by `w` (shape [out, in], checked: ModelError naming `what`). The
  // "weight" parameter becomes undefined, so named_parameters() no longer lists it; `scratch` (shared
  // by the model's NF4 layers) receives the dequantized weight during forward.
  void set_nf4(quant::Nf4Tensor w, std::shared_ptr<at::Tensor> scratch, const std::string& what);
  bool is_nf4() const { return nf4_ != nullptr; }
  const quant::Nf4Tensor& nf4() const { return *nf4_; }  // only when is_nf4()
  // LoRA side paths (nn/lora.h): the factors of adapter `id` on this layer (replacing earlier ones of
  // that id); they apply to the images whose LoraSet in the active LoraScope names the id. ModelError
  // naming `what` when the shapes do not fit [out, in].
  void set_lora(int id, LoraFactors factors, const std::string& what);
  void remove_lora(int id);
  void clear_loras() { loras_.clear(); }
  bool has_lora(int id) const { return loras_.count(id) != 0; }
  const std::map<int, LoraFactors>& loras() const { return loras_; }
  // Merging instead (a dense weight only): weight += sum scale * alpha_scale * up @ down over `set`'s
  // adapters held here, summed in fp32 and rounded once to the weight's dtype. The original is kept
  // (a copy on `keep_on`, e.g. the host) and unmerge_loras() puts it back bit for bit. Returns false
  // (and changes nothing) for an NF4 layer or when no adapter of `set` is held here.
  bool merge_loras(const LoraSet& set, const c10::Device& keep_on);
  void unmerge_loras();
  bool merged() const { return merged_original_.defined(); }

  // Frees the shared dequantize scratch (the next NF4 forward allocates it again where it runs).
  void release_scratch();

  // fp8 compute. set_fp8 replaces the dense or NF4 weight by `w` ([out, in], checked: ModelError naming
  // `what`); compute_in_fp8 keeps an NF4 weight and quantizes its dequantized copy per channel at each
  // call (for budgets that cannot hold fp8 weights). Either way forward() quantizes its input per row
  // (ops::quantize_fp8_rows) unless given fp8 rows, and runs ops::fp8_linear.
  void set_fp8(quant::Fp8Tensor w, const std::string& what);
  void compute_in_fp8();
  // An fp8 layer whose weight, scale and bias view storage it shares with other layers (a joined layout,
  // models::flux::SingleBlockImpl::join_fp8_projections) gets copies of its own; the values stay.
  void own_fp8_storage();
  bool takes_fp8() const { return fp8_ != nullptr || nf4_in_fp8_; }
  bool is_fp8() const { return fp8_ != nullptr; }
  const quant::Fp8Tensor& fp8() const { return *fp8_; }  // only when is_fp8()
  // The tensors that hold the weight when it is not the dense "weight" parameter (NF4 or fp8), for
  // memory accounting and pinning; empty for a dense layer.
  std::vector<at::Tensor> quantized_tensors() const;

  // Module::to also moves the NF4 tensors (offload); a dtype never converts them.
  using torch::nn::Module::to;
  void to(torch::Device device, torch::Dtype dtype, bool non_blocking = false) override;
  void to(torch::Device device, bool non_blocking = false) override;

  at::Tensor weight;  // [out, in]; undefined when is_nf4() or is_fp8()
  at::Tensor bias;    // [out], undefined without bias

 private:
  void move_quantized(const c10::Device& device);
  // The weight as the fp8 GEMM takes it: the resident fp8 one, or this call's copy of the NF4 one.
  quant::Fp8Tensor fp8_weight() const;
  void drop_dense_weight();
  // The active LoraScope's sets when any image uses one of this layer's adapters, else nullptr.
  const std::vector<LoraSet>* lora_sets() const;
  // forward_out with side paths, image by image: an image without one of this layer's adapters takes
  // exactly the plain path (as it would alone), an image with some takes the GEMM without epilogue,
  // then its side paths in order, then the GELU.
  // plain_forward: called by forward(), whose NF4 path may differ from forward_out's (the GEMV).
  // An fp8 input (a takes_fp8() layer's) goes through the fp8 GEMM as it would without side paths; the
  // side paths then read its rows dequantized (the producer kept no dense copy), in the output dtype.
  void forward_lora(const LinearInput& x, at::Tensor& out, bool gelu_tanh, const std::vector<LoraSet>& sets,
                    bool plain_forward) const;

  int64_t in_features_, out_features_;
  std::shared_ptr<quant::Nf4Tensor> nf4_;
  std::shared_ptr<at::Tensor> scratch_;
  std::shared_ptr<quant::Fp8Tensor> fp8_;
  bool nf4_in_fp8_ = false;
  std::map<int, LoraFactors> loras_;
  at::Tensor merged_original_;  // the weight before merge_loras, while merged
};
TORCH_MODULE(Linear);

}  // namespace fluxbatch::nn
