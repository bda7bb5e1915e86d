// fluxbatch entry point. Placeholder until the CLI lands.
#include <cstdio>

int main() {
  std::printf("fluxbatch %s\n", FLUXBATCH_VERSION);
  return 0;
}
