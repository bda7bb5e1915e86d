// Crash-safe file output: a file appears under its final name complete or not at all.
#pragma once
#include <string>
#include <string_view>

namespace fluxbatch::io {

// Writes `bytes` to a temporary file in the directory of `path`, fsyncs it, renames it over
// `path` and fsyncs the directory. On any failure the temporary file is removed, `path` is left
// as it was (absent or the previous complete file) and OutputError names `path` and the cause
// (io::OutputFault, output_fault.h, when the filesystem refuses all writes: full, read-only, I/O error).
// The parent directory must exist. With replace_existing false an existing `path` is never
// touched (the final rename refuses to clobber it) and OutputError says it exists.
void write_file_atomic(const std::string& path, std::string_view bytes, bool replace_existing = true);

// Creates `path` holding `bytes` unless it exists: written to a temporary file, fsynced, then link()ed
// to `path`, so of any number of processes (on one host or over NFS) exactly one creates it, and it is
// never seen half-written. Returns what `path` holds afterwards (ours or the winner's). OutputError
// naming `path` when it can be neither created nor read.
std::string create_once(const std::string& path, std::string_view bytes);

// ensure_directory, then creates and removes a temporary file in `dir`: OutputError (OutputFault for a
// read-only filesystem) saying the directory is not writable, before any work is done.
void check_writable_directory(const std::string& dir);

// Creates `dir` and its parents if needed; OutputError (naming `dir`) when that fails or when
// `dir` exists and is not a directory.
void ensure_directory(const std::string& dir);

}  // namespace fluxbatch::io
