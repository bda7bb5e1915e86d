// Unicode data the CLIP tokenizer needs (generated into unicode_tables.cpp, sorted by code point).
#pragma once
#include <cstddef>
#include <cstdint>

namespace fluxbatch::tokenizers::unicode_tables {

struct Range {
  char32_t first, last;
};
struct ClassRange {
  char32_t first, last;
  std::uint8_t combining_class;
};
// Canonical decomposition cp -> first [second]; `composes` marks primary composites NFC rebuilds.
struct Decomposition {
  char32_t cp, first, second;
  std::uint8_t composes;
};
struct LowerSingle {
  char32_t cp, lower;
};
struct LowerDouble {
  char32_t cp, first, second;
};

extern const Range kLetterRanges[];
extern const std::size_t kLetterRangesSize;
extern const Range kNumberRanges[];
extern const std::size_t kNumberRangesSize;
extern const ClassRange kCombiningClasses[];
extern const std::size_t kCombiningClassesSize;
extern const Decomposition kDecompositions[];
extern const std::size_t kDecompositionsSize;
extern const LowerSingle kLowerSingle[];
extern const std::size_t kLowerSingleSize;
extern const LowerDouble kLowerDouble[];
extern const std::size_t kLowerDoubleSize;

}  // namespace fluxbatch::tokenizers::unicode_tables
