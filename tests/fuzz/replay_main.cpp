// Replays libFuzzer corpora without libFuzzer, with any compiler: every file of the folders given goes
// once through the target's LLVMFuzzerTestOneInput, which aborts on a broken invariant (an unexpected
// exception ends the process too). ctest runs it over the committed corpora (tests/fuzz/corpus/<target>/),
// so every input the long sanitizer runs kept, and every finding added there, is checked in CI.
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);

int main(int argc, char** argv) {
  namespace fs = std::filesystem;
  long inputs = 0;
  for (int a = 1; a < argc; ++a) {
    std::vector<fs::path> files;
    for (const auto& e : fs::directory_iterator(argv[a])) {
      if (e.is_regular_file()) files.push_back(e.path());
    }
    std::sort(files.begin(), files.end());
    for (const fs::path& f : files) {
      std::ifstream in(f, std::ios::binary);
      const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
      LLVMFuzzerTestOneInput(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size());
      ++inputs;
    }
  }
  std::printf("%ld input(s) replayed\n", inputs);
  return inputs > 0 ? 0 : 1;  // an empty or missing corpus is a failure, not a pass
}
