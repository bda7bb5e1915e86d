// Output file-name templates: "{index:05}-{slug}-{seed}.png" and friends.
#pragma once
#include <cstddef>
#include <string>

#include "fluxbatch/job/job_spec.h"

namespace fluxbatch::job {

// Longest slug {slug} produces; {slug:N} asks for at most N (1 .. kMaxSlugLength) characters.
inline constexpr size_t kDefaultSlugLength = 40;
inline constexpr size_t kMaxSlugLength = 200;

// The placeholders a template may use, in documentation order.
inline constexpr const char* kNamePlaceholders[] = {"index", "item", "copy",   "seed",
                                                   "width", "height", "steps", "slug"};

// Renders `tmpl` for one item: placeholders replaced, ".png" appended when missing. The result is a
// relative path that stays inside the output directory. Throws InputError for a bad template
// (unknown placeholder, bad format, escaping the output directory); load_job reports the same
// problems as diagnostics before anything renders.
std::string format_name(const std::string& tmpl, const RenderItem& item);

// The template's problem in one sentence, or "" when `tmpl` is valid.
std::string name_template_error(const std::string& tmpl);

// A filesystem-safe slug of a prompt: ASCII letters and digits lowercased, every other run of
// characters turned into one '-', no leading/trailing '-', cut at a word boundary to at most
// `max_len` characters when possible. Never empty: "prompt" when nothing is left.
std::string slugify(const std::string& prompt, size_t max_len = kDefaultSlugLength);

}  // namespace fluxbatch::job
