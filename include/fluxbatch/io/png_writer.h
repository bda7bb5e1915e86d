// PNG output with text metadata: 8-bit RGB encoded by stb_image_write, tEXt/iTXt chunks right
// after IHDR, written atomically (see atomic_file.h).
#pragma once
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace fluxbatch::io {

// One text chunk. ASCII text goes into tEXt; any other byte makes it an uncompressed UTF-8
// iTXt chunk (tEXt is Latin-1 by definition, so UTF-8 there would read back garbled).
struct PngText {
  std::string key;   // 1..79 printable ASCII characters, no leading/trailing space
  std::string text;  // UTF-8, no NUL bytes
};

// PNG bytes of an 8-bit RGB image (rgb.size() == width * height * 3) with `text` chunks.
// Throws OutputError on bad dimensions, bad keys or an encoder failure.
std::string encode_png(int width, int height, const std::vector<uint8_t>& rgb,
                       const std::vector<PngText>& text);

// The two halves of encode_png: the pixels alone (what the image cache keeps), and a PNG with text
// chunks inserted right after IHDR. add_png_text: InputError when `png` does not start with the
// signature and an IHDR chunk.
std::string encode_plain_png(int width, int height, const std::vector<uint8_t>& rgb);
std::string add_png_text(std::string_view png, const std::vector<PngText>& text);

// encode_png + write_file_atomic: `path` holds the complete PNG or is left untouched.
// OutputError names `path`; with replace_existing false an existing file is an error, never replaced.
void write_png_atomic(const std::string& path, int width, int height, const std::vector<uint8_t>& rgb,
                      const std::vector<PngText>& text, bool replace_existing = true);

// Any struct with width, height and rgb members (e.g. runtime::Image).
template <class ImageLike>
void write_png_atomic(const std::string& path, const ImageLike& image, const std::vector<PngText>& text,
                      bool replace_existing = true) {
  write_png_atomic(path, image.width, image.height, image.rgb, text, replace_existing);
}

// The tEXt and (uncompressed) iTXt chunks of a PNG, in file order. Throws InputError when the
// bytes are not a well-formed PNG (signature, chunk lengths, CRCs).
std::vector<PngText> read_png_text(std::string_view png);

// CRC-32 as PNG (and zlib) define it: polynomial 0xEDB88320, initial and final XOR 0xFFFFFFFF.
uint32_t crc32(std::string_view bytes);

// What the A1111 / Forge "parameters" text needs for one FLUX image.
// A LoRA in the parameters text: <lora:NAME:SCALE> after the prompt, NAME: HASH in "Lora hashes".
struct InfotextLora {
  std::string name;        // the file name without extension
  double scale = 1.0;
  std::string short_hash;  // A1111's (sha256 of the tensor data, 12 hex digits); empty: not listed
};

struct InfotextParams {
  std::string prompt;
  std::vector<InfotextLora> loras;
  int steps = 0;
  double guidance = 0.0;  // FLUX.1-dev distilled guidance ("Distilled CFG Scale" in Forge)
  uint64_t seed = 0;
  int width = 0;
  int height = 0;
  std::string model;
};

// The "parameters" text as Stable Diffusion WebUI Forge writes it for FLUX, so PNG-info readers
// (WebUI, Civitai, ...) understand it:
//   <prompt>\nSteps: 28, Sampler: Euler, Schedule type: Simple, CFG scale: 1, Distilled CFG Scale: 3.5,
//   Seed: 42, Size: 1024x1024, Model: FLUX.1-dev, Version: fluxbatch 0.1.0
// With LoRAs the prompt line ends in " <lora:ink:0.8>" per LoRA (how A1111 prompts carry them) and a
// `Lora hashes: "ink: 0123456789ab, ..."` entry comes before Version (what Civitai reads).
// Values containing ',', ':' or a newline are JSON-quoted, as WebUI's infotext quote() does.
std::string a1111_parameters(const InfotextParams& params);

}  // namespace fluxbatch::io
