// A fast reader of manifest lines as fluxbatch writes them (a resume of a million images reads a
// manifest of ~450 MB): one pass, no JSON tree, the entry's strings reused between lines. It accepts a
// subset of JSON that covers every line fluxbatch writes: an object of ASCII strings (\u escapes below
// 0x80), integers, numbers, booleans and null, with nested objects and arrays skipped (or read, for
// "timings"), and no key twice. Anything else it declines, and the caller parses the line with
// nlohmann, which gives the same entry or names the problem.
#pragma once
#include <string_view>

#include "fluxbatch/io/manifest.h"

namespace fluxbatch::io::detail {

enum class ScanResult { kEntry, kEvent, kDeclined };

// On kEntry every field of `entry` is set from the line (cached false when absent).
ScanResult scan_manifest_line(std::string_view line, ManifestEntry& entry);

}  // namespace fluxbatch::io::detail
