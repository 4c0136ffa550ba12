// `kosh dataset build`: turns CSV / TSV / JSON Lines input of any size into a version directory
// of sorted partitioned files and a manifest, on a machine without a server.
//
// How (docs/architecture.md, "The path of a build"):
//  1. Read: one reader thread per input file (up to `threads`) decompresses and cuts the file into
//     chunks of whole lines with their line numbers.
//  2. Parse and sort runs: `threads` workers parse chunks into (storage key, sequence, value)
//     records in a per-worker buffer; a full buffer is sorted and spilled to a run file (one
//     sorted section per partition). The sequence is (file index, line number), so "last" means
//     last in input order whatever the chunking.
//  3. Merge: if more runs than `max_fan_in` were spilled, groups of runs are merged first. Then
//     each partition, in parallel, k-way merges its sections of every run (and of the in-memory
//     tails), resolves duplicate keys, and writes its SST files of about `target_file_bytes`.
//  4. The manifest is written last (atomically), so a directory without one is an unfinished build.
// Memory stays near `memory_budget` whatever the input size: about 60% for the sort buffers, 25%
// for merge read buffers and the rest for chunks in flight. Output depends only on the input rows
// and the partition count: the same input gives the same files' contents (content_digest) with any
// thread count, memory budget or split of the rows across input files.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "datasets/input.h"
#include "datasets/manifest.h"
#include "storage/sorted_files.h"

namespace kosh::datasets {

struct BuildOptions {
  std::string dataset;
  ValueSchema schema;
  std::vector<std::string> inputs;  // files, read in this order (it defines "last" for duplicates)
  std::optional<InputFormat> format;  // default: from the first input's name
  ParserOptions parser;               // format and schema are filled in from the fields above
  std::string output_dir;             // created if missing; must not already hold this build's files

  OnDuplicate on_duplicate = OnDuplicate::kError;
  uint64_t max_bad_rows = 0;        // malformed rows tolerated (skipped and reported)
  uint32_t max_reported_errors = 20;

  uint32_t partitions = 16;
  std::optional<uint32_t> partition;  // build only this partition (rows of others are skipped)

  uint64_t memory_budget = 1ull << 30;
  int threads = 0;                    // 0 = every core
  std::string tmp_dir;                // spill files; default <output_dir>/.spill-<pid>
  uint64_t target_file_bytes = 256ull << 20;
  uint32_t max_fan_in = 64;           // runs merged at once
  storage::SortedFileOptions sst;  // sst.compression is replaced by `compression` below
  // Data block compression. Default: none for RECS (varint ids and float scores do not compress;
  // LZ4 would only spend build time), lz4 for the other kinds.
  std::optional<storage::Compression> compression;
  std::string label;
};

struct BuildReport {
  uint64_t input_files = 0;
  uint64_t input_bytes = 0;        // uncompressed bytes parsed
  uint64_t input_file_bytes = 0;   // bytes read from disk (compressed size for compressed files)
  uint64_t lines = 0;              // non-blank lines (header lines excluded)
  uint64_t rows_written = 0;       // distinct keys written
  uint64_t bad_rows = 0;           // malformed rows (skipped when within max_bad_rows)
  uint64_t duplicate_rows = 0;     // rows superseded by a later row with the same key (last wins)
  uint64_t other_partition_rows = 0;  // with --partition: rows that belong to other partitions
  uint64_t runs_spilled = 0;
  uint64_t spill_bytes = 0;
  uint64_t merge_passes = 0;       // intermediate passes before the final merge
  uint64_t output_bytes = 0;
  uint64_t files = 0;
  int threads = 0;
  double read_parse_seconds = 0;
  double merge_write_seconds = 0;
  double total_seconds = 0;
  std::vector<std::string> errors;  // the first malformed rows / duplicates, "file:line: message"
  std::string manifest_path;
  std::string content_digest;

  // One JSON object with every figure.
  std::string ToJson() const;
};

// Runs the build. On success the output directory holds the files and the manifest. On failure
// nothing of this build is left in the output directory, and the status says why (with the first
// errors); *report still has the counts.
absl::Status Build(const BuildOptions& options, BuildReport* report);

}  // namespace kosh::datasets
