// Build input: files of CSV, TSV or JSON Lines (optionally gzip or zstd compressed), read as chunks of
// whole lines, and the parser that turns one line into a storage key and an encoded value.
//
// Formats (docs/formats.md, "Dataset build input"):
//  - CSV: RFC 4180 fields separated by ','; a field may be double-quoted ("" is a quote inside);
//    a record is one line (quoted fields cannot span lines).
//  - TSV: fields separated by '\t', no quoting.
//  - JSONL: one JSON object per line.
// Lines end with "\n" or "\r\n"; blank lines are skipped. Compression is detected from the file's
// first bytes (gzip 1f 8b, zstd 28 b5 2f fd), not its name.
#pragma once

#include <cstdint>
#include <deque>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "datasets/value_codec.h"

namespace kosh::datasets {

enum class InputFormat { kCsv, kTsv, kJsonl };
absl::StatusOr<InputFormat> ParseInputFormat(absl::string_view name);  // csv, tsv, jsonl (json, ndjson)
absl::string_view InputFormatName(InputFormat f);
// The format implied by a file name (".csv", ".tsv", ".jsonl", ".ndjson", ".json", each optionally
// followed by ".gz", ".zst" or ".zstd"); nullopt when the name says nothing.
std::optional<InputFormat> FormatFromName(absl::string_view path);

// Reads one (possibly compressed) file as chunks of whole lines. Not thread-safe.
class LineSource {
 public:
  static absl::StatusOr<std::unique_ptr<LineSource>> Open(const std::string& path);
  virtual ~LineSource() = default;

  // Replaces *data with the next whole lines, about `target` bytes (more when a single line is
  // longer; INVALID_ARGUMENT naming the line if one exceeds `max_line` bytes). *first_line is the
  // 1-based number of its first line. Returns false (and leaves *data empty) at the end of the file.
  virtual absl::StatusOr<bool> Next(size_t target, size_t max_line, std::string* data, uint64_t* first_line) = 0;
  // "none", "gzip" or "zstd".
  virtual absl::string_view compression() const = 0;
  // Bytes read from the file so far (compressed bytes for compressed files).
  virtual uint64_t file_bytes_read() const = 0;
};

enum class OnDuplicate { kError, kLastWins };

struct ParserOptions {
  InputFormat format = InputFormat::kCsv;
  ValueSchema schema;
  // CSV/TSV: the first line of every file names the columns.
  bool header = false;
  // CSV/TSV columns: a header name (with `header`) or a 0-based index. Empty: the key is column 0
  // and (BYTES, JSON, RECS) the value is column 1; RECORD fields are the columns after the key in
  // field order, or with a header the columns named like the fields.
  std::string key_column;
  std::string value_column;
  // JSONL members: the key (a string or an integer) and, except for RECORD, the value. RECORD
  // values are the object members named like the fields (or the members of `value_field` when it
  // is an object).
  std::string key_field = "key";
  std::string value_field = "value";
  BytesEncoding bytes_encoding = BytesEncoding::kRaw;
  uint32_t max_key_bytes = 4096;
};

// Where the parser finds the key and value in the CSV/TSV rows of one file.
struct ColumnMap {
  int key = 0;
  int value = 1;
  std::vector<int> field_column;  // RECORD: the column of each field, or -1 when absent
  int min_columns = 2;            // rows with fewer columns are malformed
};

// Builds the column map from the options and, with `header`, the file's header line. Errors name
// the missing column.
absl::StatusOr<ColumnMap> MakeColumnMap(const ParserOptions& options, std::optional<absl::string_view> header);

// Parses lines. One per thread: it keeps scratch buffers between calls.
class RowParser {
 public:
  explicit RowParser(const ParserOptions& options);
  ~RowParser();

  // Parses `line` (without its line ending). On OK, *key views the key (valid until the next call)
  // and *value holds the encoded value. INVALID_ARGUMENT describes what is wrong with the row.
  absl::Status Parse(absl::string_view line, const ColumnMap& columns, absl::string_view* key, std::string* value);

 private:
  absl::Status ParseDelimited(absl::string_view line, const ColumnMap& columns, absl::string_view* key,
                              std::string* value);
  absl::Status ParseJson(absl::string_view line, absl::string_view* key, std::string* value);
  absl::Status CheckKey(absl::string_view key) const;

  const ParserOptions& options_;
  std::vector<absl::string_view> fields_;
  std::deque<std::string> unquoted_;  // storage for quoted CSV fields with "" escapes (stable addresses)
  std::string key_scratch_;
  std::vector<RecItemView> items_;
  std::vector<v1::Value> values_;
  std::vector<const v1::Value*> value_ptrs_;
  std::vector<int> field_idx_;
};

}  // namespace kosh::datasets
