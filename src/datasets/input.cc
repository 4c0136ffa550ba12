#include "datasets/input.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <deque>
#include <limits>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "base/status.h"
#include "nlohmann/json.hpp"
#include "zlib.h"
#include "zstd.h"

namespace kosh::datasets {
namespace {

using Json = nlohmann::json;

absl::Status Errno(absl::string_view what, const std::string& path, int err) {
  std::string msg = absl::StrCat(what, " ", path, ": ", std::strerror(err));
  if (err == ENOENT) return absl::NotFoundError(msg);
  if (err == EACCES || err == EPERM) return absl::PermissionDeniedError(msg);
  return absl::InternalError(msg);
}

// --- decoders ------------------------------------------------------------------------------------

class File {
 public:
  File(int fd, std::string path) : fd_(fd), path_(std::move(path)) {}
  ~File() { ::close(fd_); }
  // Reads up to n bytes; 0 at the end.
  absl::StatusOr<size_t> Read(char* buf, size_t n) {
    while (true) {
      ssize_t r = ::read(fd_, buf, n);
      if (r >= 0) {
        bytes_ += static_cast<uint64_t>(r);
        return static_cast<size_t>(r);
      }
      if (errno != EINTR) return Errno("reading", path_, errno);
    }
  }
  uint64_t bytes() const { return bytes_; }
  const std::string& path() const { return path_; }

 private:
  int fd_;
  std::string path_;
  uint64_t bytes_ = 0;
};

class Decoder {
 public:
  virtual ~Decoder() = default;
  virtual absl::StatusOr<size_t> Read(char* buf, size_t n) = 0;
};

class PlainDecoder final : public Decoder {
 public:
  PlainDecoder(File* f, std::string prefix) : f_(f), prefix_(std::move(prefix)) {}
  absl::StatusOr<size_t> Read(char* buf, size_t n) override {
    if (pos_ < prefix_.size()) {
      size_t k = std::min(n, prefix_.size() - pos_);
      std::memcpy(buf, prefix_.data() + pos_, k);
      pos_ += k;
      return k;
    }
    return f_->Read(buf, n);
  }

 private:
  File* f_;
  std::string prefix_;  // the bytes read to detect the compression
  size_t pos_ = 0;
};

class GzipDecoder final : public Decoder {
 public:
  GzipDecoder(File* f, std::string prefix) : f_(f), in_(1 << 20, '\0') {
    std::memset(&zs_, 0, sizeof(zs_));
    inflateInit2(&zs_, 15 + 32);  // gzip or zlib header
    std::memcpy(in_.data(), prefix.data(), prefix.size());
    zs_.next_in = reinterpret_cast<Bytef*>(in_.data());
    zs_.avail_in = static_cast<uInt>(prefix.size());
  }
  ~GzipDecoder() override { inflateEnd(&zs_); }

  absl::StatusOr<size_t> Read(char* buf, size_t n) override {
    zs_.next_out = reinterpret_cast<Bytef*>(buf);
    zs_.avail_out = static_cast<uInt>(std::min<size_t>(n, 1u << 30));
    while (zs_.avail_out > 0) {
      if (zs_.avail_in == 0 && !file_eof_) {
        ASSIGN_OR_RETURN(size_t r, f_->Read(in_.data(), in_.size()));
        if (r == 0) file_eof_ = true;
        zs_.next_in = reinterpret_cast<Bytef*>(in_.data());
        zs_.avail_in = static_cast<uInt>(r);
      }
      if (zs_.avail_in == 0 && file_eof_) {
        if (!stream_ended_) {
          return absl::DataLossError(absl::StrCat(f_->path(), ": truncated gzip stream"));
        }
        break;
      }
      if (stream_ended_) {  // another gzip member follows
        inflateReset(&zs_);
        stream_ended_ = false;
      }
      int rc = inflate(&zs_, Z_NO_FLUSH);
      if (rc == Z_STREAM_END) {
        stream_ended_ = true;
      } else if (rc != Z_OK && rc != Z_BUF_ERROR) {
        return absl::DataLossError(absl::StrCat(f_->path(), ": corrupt gzip data (",
                                                zs_.msg ? zs_.msg : "inflate failed", ")"));
      }
    }
    return n - zs_.avail_out;
  }

 private:
  File* f_;
  std::string in_;
  z_stream zs_;
  bool file_eof_ = false;
  bool stream_ended_ = false;
};

class ZstdDecoder final : public Decoder {
 public:
  ZstdDecoder(File* f, std::string prefix) : f_(f), in_(ZSTD_DStreamInSize(), '\0'), dctx_(ZSTD_createDCtx()) {
    std::memcpy(in_.data(), prefix.data(), prefix.size());
    ib_ = {in_.data(), prefix.size(), 0};
  }
  ~ZstdDecoder() override { ZSTD_freeDCtx(dctx_); }

  absl::StatusOr<size_t> Read(char* buf, size_t n) override {
    ZSTD_outBuffer ob = {buf, n, 0};
    while (ob.pos < ob.size) {
      if (ib_.pos == ib_.size && !file_eof_) {
        ASSIGN_OR_RETURN(size_t r, f_->Read(in_.data(), in_.size()));
        if (r == 0) file_eof_ = true;
        ib_ = {in_.data(), r, 0};
      }
      if (ib_.pos == ib_.size && file_eof_) {
        // Drain what the decoder still holds, then check that the last frame was complete
        // (ZSTD_decompressStream returned 0 when it finished a frame).
        size_t before = ob.pos;
        size_t rc = ZSTD_decompressStream(dctx_, &ob, &ib_);
        if (ZSTD_isError(rc)) return Corrupt(rc);
        if (ob.pos > before) {
          last_rc_ = rc;
          continue;
        }
        if (last_rc_ != 0) return absl::DataLossError(absl::StrCat(f_->path(), ": truncated zstd stream"));
        break;
      }
      size_t rc = ZSTD_decompressStream(dctx_, &ob, &ib_);
      if (ZSTD_isError(rc)) return Corrupt(rc);
      last_rc_ = rc;
    }
    return ob.pos;
  }

 private:
  absl::Status Corrupt(size_t rc) {
    return absl::DataLossError(absl::StrCat(f_->path(), ": corrupt zstd data (", ZSTD_getErrorName(rc), ")"));
  }
  File* f_;
  std::string in_;
  ZSTD_inBuffer ib_;
  ZSTD_DCtx* dctx_;
  size_t last_rc_ = 1;  // 0 right after a complete frame
  bool file_eof_ = false;
};

class LineSourceImpl final : public LineSource {
 public:
  LineSourceImpl(std::unique_ptr<File> file, std::unique_ptr<Decoder> dec, const char* compression)
      : file_(std::move(file)), dec_(std::move(dec)), compression_(compression) {}

  absl::StatusOr<bool> Next(size_t target, size_t max_line, std::string* data, uint64_t* first_line) override {
    data->clear();
    data->swap(carry_);
    target = std::max<size_t>(target, 1);
    while (true) {
      if (!eof_ && data->size() < target) {
        size_t old = data->size();
        data->resize(old + std::max<size_t>(target - old, 1024));
        auto r = dec_->Read(data->data() + old, data->size() - old);
        if (!r.ok()) {
          data->clear();
          return r.status();
        }
        data->resize(old + *r);
        if (*r == 0) eof_ = true;
        continue;
      }
      const char* base = data->data();
      const void* nl = data->empty() ? nullptr : memrchr(base, '\n', data->size());
      if (nl != nullptr) {
        size_t pos = static_cast<const char*>(nl) - base;
        carry_.assign(base + pos + 1, data->size() - pos - 1);
        data->resize(pos + 1);
        break;
      }
      if (eof_) {
        if (data->empty()) return false;
        break;  // the last line has no newline
      }
      if (data->size() > max_line) {
        return absl::InvalidArgumentError(absl::StrCat(file_->path(), ":", next_line_, ": line longer than ",
                                                       max_line, " bytes"));
      }
      target = data->size() + std::max<size_t>(target / 2, 64 * 1024);
    }
    *first_line = next_line_;
    uint64_t lines = 0;
    for (const char *q = data->data(), *e = q + data->size();
         (q = static_cast<const char*>(std::memchr(q, '\n', e - q))) != nullptr; ++q) {
      ++lines;
    }
    next_line_ += lines;
    return true;
  }

  absl::string_view compression() const override { return compression_; }
  uint64_t file_bytes_read() const override { return file_->bytes(); }

 private:
  std::unique_ptr<File> file_;
  std::unique_ptr<Decoder> dec_;
  const char* compression_;
  std::string carry_;
  uint64_t next_line_ = 1;
  bool eof_ = false;
};

// --- CSV / TSV splitting ----------------------------------------------------------------------------

void SplitOn(absl::string_view line, char sep, std::vector<absl::string_view>* out) {
  out->clear();
  size_t start = 0;
  while (true) {
    const void* p = std::memchr(line.data() + start, sep, line.size() - start);
    if (p == nullptr) {
      out->push_back(line.substr(start));
      return;
    }
    size_t pos = static_cast<const char*>(p) - line.data();
    out->push_back(line.substr(start, pos - start));
    start = pos + 1;
  }
}

// RFC 4180 within one line. Quoted fields without "" are views into the line; the others are
// unescaped into `storage`.
absl::Status SplitCsv(absl::string_view line, std::vector<absl::string_view>* out, std::deque<std::string>* storage) {
  if (std::memchr(line.data(), '"', line.size()) == nullptr) {
    SplitOn(line, ',', out);
    return absl::OkStatus();
  }
  out->clear();
  storage->clear();
  size_t i = 0;
  const size_t n = line.size();
  while (true) {
    if (i < n && line[i] == '"') {
      size_t start = ++i;
      bool escaped = false;
      while (true) {
        if (i >= n) {
          return absl::InvalidArgumentError(absl::StrCat("column ", out->size() + 1, ": unterminated quoted field"));
        }
        if (line[i] == '"') {
          if (i + 1 < n && line[i + 1] == '"') {
            escaped = true;
            i += 2;
            continue;
          }
          break;
        }
        ++i;
      }
      absl::string_view raw = line.substr(start, i - start);
      ++i;  // closing quote
      if (escaped) {
        std::string s;
        s.reserve(raw.size());
        for (size_t k = 0; k < raw.size(); ++k) {
          s.push_back(raw[k]);
          if (raw[k] == '"') ++k;
        }
        storage->push_back(std::move(s));
        out->push_back(storage->back());
      } else {
        out->push_back(raw);
      }
      if (i == n) return absl::OkStatus();
      if (line[i] != ',') {
        return absl::InvalidArgumentError(
            absl::StrCat("column ", out->size(), ": unexpected character after a closing quote"));
      }
      ++i;
      if (i == n) {
        out->push_back(absl::string_view());
        return absl::OkStatus();
      }
    } else {
      size_t start = i;
      while (i < n && line[i] != ',') {
        if (line[i] == '"') {
          return absl::InvalidArgumentError(
              absl::StrCat("column ", out->size() + 1, ": a quote inside an unquoted field"));
        }
        ++i;
      }
      out->push_back(line.substr(start, i - start));
      if (i == n) return absl::OkStatus();
      ++i;
      if (i == n) {
        out->push_back(absl::string_view());
        return absl::OkStatus();
      }
    }
  }
}

absl::StatusOr<int> ResolveColumn(const std::string& spec, const std::vector<absl::string_view>* header,
                                  absl::string_view what) {
  int idx;
  if (absl::SimpleAtoi(spec, &idx)) {
    if (idx < 0) return absl::InvalidArgumentError(absl::StrCat(what, " column ", spec, ": must be >= 0"));
    return idx;
  }
  if (header == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, " column \"", spec, "\": a column name needs --header (or give a 0-based index)"));
  }
  for (size_t i = 0; i < header->size(); ++i) {
    if ((*header)[i] == spec) return static_cast<int>(i);
  }
  return absl::InvalidArgumentError(absl::StrCat(what, " column \"", spec, "\" is not in the header"));
}

// --- JSON values ----------------------------------------------------------------------------------

absl::Status JsonToValue(const v1::FeatureSpec& spec, const Json& j, BytesEncoding bytes_enc, v1::Value* out) {
  auto bad = [&] {
    return absl::InvalidArgumentError(absl::StrCat("field \"", spec.name(), "\": expected ",
                                                   features::TypeName(spec.type()), ", got ", j.type_name()));
  };
  auto as_int = [&](const Json& x, int64_t lo, int64_t hi, int64_t* v) {
    if (x.is_number_unsigned()) {
      uint64_t u = x.get<uint64_t>();
      if (u > static_cast<uint64_t>(hi)) return false;
      *v = static_cast<int64_t>(u);
      return true;
    }
    if (!x.is_number_integer()) return false;
    *v = x.get<int64_t>();
    return *v >= lo && *v <= hi;
  };
  switch (spec.type()) {
    case v1::BOOL:
      if (!j.is_boolean()) return bad();
      out->set_bool_value(j.get<bool>());
      return absl::OkStatus();
    case v1::INT32: {
      int64_t v;
      if (!as_int(j, INT32_MIN, INT32_MAX, &v)) return bad();
      out->set_int32_value(static_cast<int32_t>(v));
      return absl::OkStatus();
    }
    case v1::INT64: {
      int64_t v;
      if (!as_int(j, INT64_MIN, INT64_MAX, &v)) return bad();
      out->set_int64_value(v);
      return absl::OkStatus();
    }
    case v1::FLOAT32:
      if (!j.is_number()) return bad();
      out->set_float32_value(j.get<float>());
      return absl::OkStatus();
    case v1::FLOAT64:
      if (!j.is_number()) return bad();
      out->set_float64_value(j.get<double>());
      return absl::OkStatus();
    case v1::STRING:
      if (!j.is_string()) return bad();
      out->set_string_value(j.get_ref<const std::string&>());
      return absl::OkStatus();
    case v1::BYTES: {
      if (!j.is_string()) return bad();
      const std::string& s = j.get_ref<const std::string&>();
      if (bytes_enc == BytesEncoding::kBase64) {
        std::string d;
        if (!absl::Base64Unescape(s, &d)) return absl::InvalidArgumentError(absl::StrCat("field \"", spec.name(), "\": invalid base64"));
        out->set_bytes_value(std::move(d));
      } else {
        out->set_bytes_value(s);
      }
      return absl::OkStatus();
    }
    default: break;
  }
  if (!j.is_array()) return bad();
  for (const Json& e : j) {
    switch (spec.type()) {
      case v1::FLOAT32_VECTOR:
      case v1::FLOAT16_VECTOR:
        if (!e.is_number()) return bad();
        out->mutable_float_list()->add_values(e.get<float>());
        break;
      case v1::INT8_VECTOR:
      case v1::INT32_VECTOR: {
        int64_t v;
        if (!as_int(e, INT32_MIN, INT32_MAX, &v)) return bad();
        out->mutable_int32_list()->add_values(static_cast<int32_t>(v));
        break;
      }
      case v1::INT64_VECTOR: {
        int64_t v;
        if (!as_int(e, INT64_MIN, INT64_MAX, &v)) return bad();
        out->mutable_int64_list()->add_values(v);
        break;
      }
      default: return bad();
    }
  }
  if (j.empty()) {
    if (spec.type() == v1::FLOAT32_VECTOR || spec.type() == v1::FLOAT16_VECTOR) out->mutable_float_list();
    else if (spec.type() == v1::INT64_VECTOR) out->mutable_int64_list();
    else out->mutable_int32_list();
  }
  return absl::OkStatus();
}

// A JSON item id: a string, or an integer (written in decimal).
bool JsonItemId(const Json& j, std::string* out) {
  if (j.is_string()) {
    *out = j.get<std::string>();
    return true;
  }
  if (j.is_number_unsigned()) {
    *out = std::to_string(j.get<uint64_t>());
    return true;
  }
  if (j.is_number_integer()) {
    *out = std::to_string(j.get<int64_t>());
    return true;
  }
  return false;
}

}  // namespace

// --- formats --------------------------------------------------------------------------------------

absl::StatusOr<InputFormat> ParseInputFormat(absl::string_view name) {
  std::string lower = absl::AsciiStrToLower(name);
  if (lower == "csv") return InputFormat::kCsv;
  if (lower == "tsv") return InputFormat::kTsv;
  if (lower == "jsonl" || lower == "ndjson" || lower == "json") return InputFormat::kJsonl;
  return absl::InvalidArgumentError(absl::StrCat("unknown input format \"", name, "\" (csv, tsv, jsonl)"));
}

absl::string_view InputFormatName(InputFormat f) {
  switch (f) {
    case InputFormat::kCsv: return "csv";
    case InputFormat::kTsv: return "tsv";
    case InputFormat::kJsonl: return "jsonl";
  }
  return "csv";
}

std::optional<InputFormat> FormatFromName(absl::string_view path) {
  std::string lower = absl::AsciiStrToLower(path);
  absl::string_view p = lower;
  for (absl::string_view ext : {".gz", ".gzip", ".zst", ".zstd"}) {
    if (absl::ConsumeSuffix(&p, ext)) break;
  }
  if (absl::EndsWith(p, ".csv")) return InputFormat::kCsv;
  if (absl::EndsWith(p, ".tsv") || absl::EndsWith(p, ".tab")) return InputFormat::kTsv;
  if (absl::EndsWith(p, ".jsonl") || absl::EndsWith(p, ".ndjson") || absl::EndsWith(p, ".json")) {
    return InputFormat::kJsonl;
  }
  return std::nullopt;
}

absl::StatusOr<std::unique_ptr<LineSource>> LineSource::Open(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return Errno("opening", path, errno);
  ::posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL);
  auto file = std::make_unique<File>(fd, path);
  std::string prefix(4, '\0');
  size_t got = 0;
  while (got < prefix.size()) {
    ASSIGN_OR_RETURN(size_t r, file->Read(prefix.data() + got, prefix.size() - got));
    if (r == 0) break;
    got += r;
  }
  prefix.resize(got);
  const auto* b = reinterpret_cast<const unsigned char*>(prefix.data());
  std::unique_ptr<Decoder> dec;
  const char* compression = "none";
  if (got >= 2 && b[0] == 0x1f && b[1] == 0x8b) {
    compression = "gzip";
    dec = std::make_unique<GzipDecoder>(file.get(), prefix);
  } else if (got >= 4 && b[0] == 0x28 && b[1] == 0xb5 && b[2] == 0x2f && b[3] == 0xfd) {
    compression = "zstd";
    dec = std::make_unique<ZstdDecoder>(file.get(), prefix);
  } else {
    dec = std::make_unique<PlainDecoder>(file.get(), prefix);
  }
  return std::unique_ptr<LineSource>(new LineSourceImpl(std::move(file), std::move(dec), compression));
}

// --- columns --------------------------------------------------------------------------------------

absl::StatusOr<ColumnMap> MakeColumnMap(const ParserOptions& o, std::optional<absl::string_view> header) {
  ColumnMap m;
  std::vector<absl::string_view> names;
  std::deque<std::string> storage;
  const std::vector<absl::string_view>* hdr = nullptr;
  if (header.has_value()) {
    absl::string_view h = *header;
    absl::ConsumeSuffix(&h, "\r");
    if (o.format == InputFormat::kTsv) {
      SplitOn(h, '\t', &names);
    } else {
      RETURN_IF_ERROR(SplitCsv(h, &names, &storage));
    }
    for (auto& n : names) n = absl::StripAsciiWhitespace(n);
    hdr = &names;
  }
  if (!o.key_column.empty()) {
    ASSIGN_OR_RETURN(m.key, ResolveColumn(o.key_column, hdr, "key"));
  } else {
    m.key = 0;
  }
  int max_col = m.key;
  if (o.schema.kind == v1::DATASET_KIND_RECORD) {
    m.value = -1;
    m.field_column.assign(o.schema.fields.size(), -1);
    if (hdr != nullptr) {
      for (size_t f = 0; f < o.schema.fields.size(); ++f) {
        for (size_t c = 0; c < names.size(); ++c) {
          if (names[c] == o.schema.fields[f].name() && static_cast<int>(c) != m.key) {
            m.field_column[f] = static_cast<int>(c);
          }
        }
      }
      // Every header column but the key must be a field, so that a typo is not silently dropped.
      for (size_t c = 0; c < names.size(); ++c) {
        if (static_cast<int>(c) == m.key) continue;
        if (o.schema.layout->IndexOf(names[c]) < 0) {
          return absl::InvalidArgumentError(absl::StrCat("header column ", c + 1, " \"", names[c],
                                                         "\" is not a field of the record schema"));
        }
      }
      m.min_columns = m.key + 1;
    } else {
      int c = 0;
      for (size_t f = 0; f < o.schema.fields.size(); ++f, ++c) {
        if (c == m.key) ++c;
        m.field_column[f] = c;
        max_col = std::max(max_col, c);
      }
      m.min_columns = max_col + 1;
    }
    return m;
  }
  if (!o.value_column.empty()) {
    ASSIGN_OR_RETURN(m.value, ResolveColumn(o.value_column, hdr, "value"));
  } else {
    m.value = m.key == 1 ? 0 : (m.key == 0 ? 1 : 0);
  }
  if (m.value == m.key) return absl::InvalidArgumentError("the key and value columns must differ");
  max_col = std::max(max_col, m.value);
  m.min_columns = max_col + 1;
  return m;
}

// --- RowParser --------------------------------------------------------------------------------------

RowParser::RowParser(const ParserOptions& options) : options_(options) {
  fields_.reserve(16);
  items_.reserve(64);
  values_.resize(options.schema.fields.size());
}

RowParser::~RowParser() = default;

absl::Status RowParser::CheckKey(absl::string_view key) const {
  if (key.empty()) return absl::InvalidArgumentError("empty key");
  if (key.size() > options_.max_key_bytes) {
    return absl::InvalidArgumentError(absl::StrCat("key longer than ", options_.max_key_bytes, " bytes"));
  }
  if (!IsValidUtf8(key)) return absl::InvalidArgumentError("key is not valid UTF-8");
  return absl::OkStatus();
}

absl::Status RowParser::Parse(absl::string_view line, const ColumnMap& columns, absl::string_view* key,
                              std::string* value) {
  if (options_.format == InputFormat::kJsonl) return ParseJson(line, key, value);
  return ParseDelimited(line, columns, key, value);
}

absl::Status RowParser::ParseDelimited(absl::string_view line, const ColumnMap& columns, absl::string_view* key,
                                       std::string* value) {
  if (options_.format == InputFormat::kTsv) {
    SplitOn(line, '\t', &fields_);
  } else {
    RETURN_IF_ERROR(SplitCsv(line, &fields_, &unquoted_));
  }
  if (static_cast<int>(fields_.size()) < columns.min_columns) {
    return absl::InvalidArgumentError(
        absl::StrCat("expected at least ", columns.min_columns, " columns, got ", fields_.size()));
  }
  *key = fields_[columns.key];
  RETURN_IF_ERROR(CheckKey(*key));
  switch (options_.schema.kind) {
    case v1::DATASET_KIND_BYTES:
      return EncodeBytesText(fields_[columns.value], options_.bytes_encoding, value);
    case v1::DATASET_KIND_JSON: {
      absl::string_view text = fields_[columns.value];
      try {
        Json j = Json::parse(text.begin(), text.end());
        EncodeJson(j.dump(), value);
      } catch (const Json::exception& e) {
        return absl::InvalidArgumentError(absl::StrCat("value: invalid JSON: ", e.what()));
      }
      return absl::OkStatus();
    }
    case v1::DATASET_KIND_RECS:
      return EncodeRecsText(fields_[columns.value], value);
    case v1::DATASET_KIND_RECORD: {
      field_idx_.clear();
      value_ptrs_.clear();
      for (size_t f = 0; f < columns.field_column.size(); ++f) {
        int c = columns.field_column[f];
        if (c < 0 || c >= static_cast<int>(fields_.size()) || fields_[c].empty()) continue;  // unset
        absl::Status st = ParseCell(options_.schema.fields[f], fields_[c], &values_[f]);
        if (!st.ok()) {
          return absl::InvalidArgumentError(absl::StrCat("field \"", options_.schema.fields[f].name(), "\": ", st.message()));
        }
        field_idx_.push_back(static_cast<int>(f));
        value_ptrs_.push_back(&values_[f]);
      }
      return EncodeRecord(options_.schema, field_idx_, value_ptrs_, value);
    }
    default: return absl::FailedPreconditionError("no dataset kind");
  }
}

absl::Status RowParser::ParseJson(absl::string_view line, absl::string_view* key, std::string* value) {
  Json doc;
  try {
    doc = Json::parse(line.begin(), line.end());
  } catch (const Json::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat("invalid JSON: ", e.what()));
  }
  if (!doc.is_object()) return absl::InvalidArgumentError("expected a JSON object");
  auto kit = doc.find(options_.key_field);
  if (kit == doc.end()) return absl::InvalidArgumentError(absl::StrCat("no \"", options_.key_field, "\" member"));
  if (kit->is_string()) {
    key_scratch_ = kit->get<std::string>();
  } else if (!JsonItemId(*kit, &key_scratch_)) {
    return absl::InvalidArgumentError(absl::StrCat("\"", options_.key_field, "\": expected a string or an integer"));
  }
  *key = key_scratch_;
  RETURN_IF_ERROR(CheckKey(*key));
  const DatasetKind kind = options_.schema.kind;
  if (kind == v1::DATASET_KIND_RECORD) {
    const Json* src = &doc;
    auto vit = doc.find(options_.value_field);
    if (vit != doc.end() && vit->is_object()) src = &*vit;
    field_idx_.clear();
    value_ptrs_.clear();
    for (auto it = src->begin(); it != src->end(); ++it) {
      if (src == &doc && it.key() == options_.key_field) continue;
      int f = options_.schema.layout->IndexOf(it.key());
      if (f < 0) return absl::InvalidArgumentError(absl::StrCat("\"", it.key(), "\" is not a field of the record schema"));
      if (it.value().is_null()) continue;
      values_[f].Clear();
      RETURN_IF_ERROR(JsonToValue(options_.schema.fields[f], it.value(), options_.bytes_encoding, &values_[f]));
      field_idx_.push_back(f);
      value_ptrs_.push_back(&values_[f]);
    }
    return EncodeRecord(options_.schema, field_idx_, value_ptrs_, value);
  }
  auto vit = doc.find(options_.value_field);
  if (vit == doc.end()) return absl::InvalidArgumentError(absl::StrCat("no \"", options_.value_field, "\" member"));
  const Json& v = *vit;
  const std::string vname = absl::StrCat("\"", options_.value_field, "\"");
  switch (kind) {
    case v1::DATASET_KIND_BYTES:
      if (!v.is_string()) return absl::InvalidArgumentError(absl::StrCat(vname, ": expected a string"));
      return EncodeBytesText(v.get_ref<const std::string&>(), options_.bytes_encoding, value);
    case v1::DATASET_KIND_JSON:
      EncodeJson(v.dump(), value);
      return absl::OkStatus();
    case v1::DATASET_KIND_RECS: {
      if (v.is_string()) {
        RETURN_IF_ERROR(ParseRecsText(v.get_ref<const std::string&>(), &items_));
        return EncodeRecs(items_, value);
      }
      if (!v.is_array()) {
        return absl::InvalidArgumentError(absl::StrCat(vname, ": expected a list of [item_id, score] or {\"item_id\", \"score\"}"));
      }
      std::vector<std::string> ids(v.size());
      items_.clear();
      for (size_t i = 0; i < v.size(); ++i) {
        const Json& e = v[i];
        const Json* id = nullptr;
        const Json* score = nullptr;
        if (e.is_array() && e.size() == 2) {
          id = &e[0];
          score = &e[1];
        } else if (e.is_object()) {
          auto a = e.find("item_id");
          if (a == e.end()) a = e.find("id");
          auto b = e.find("score");
          if (a != e.end()) id = &*a;
          if (b != e.end()) score = &*b;
        }
        if (id == nullptr || score == nullptr || !JsonItemId(*id, &ids[i]) || !score->is_number()) {
          return absl::InvalidArgumentError(absl::StrCat(vname, "[", i, "]: expected [item_id, score] or {\"item_id\": ..., \"score\": ...}"));
        }
        items_.push_back({ids[i], score->get<float>()});
      }
      absl::Status st = EncodeRecs(items_, value);
      if (!st.ok()) return absl::InvalidArgumentError(absl::StrCat(vname, ": ", st.message()));
      return absl::OkStatus();
    }
    default: return absl::FailedPreconditionError("no dataset kind");
  }
}

}  // namespace kosh::datasets
