#include "datasets/input.h"

#include "datasets/test_util.h"
#include "gtest/gtest.h"
#include "zlib.h"
#include "zstd.h"

namespace kosh::datasets {
namespace {

using testing::TempDir;
using testing::WriteText;

ParserOptions Options(InputFormat f, DatasetKind kind, std::vector<v1::FeatureSpec> fields = {}) {
  ParserOptions o;
  o.format = f;
  o.schema = *MakeSchema(kind, std::move(fields));
  return o;
}

v1::FeatureSpec Spec(const std::string& name, v1::FeatureType t, uint32_t len = 0) {
  v1::FeatureSpec f;
  f.set_name(name);
  f.set_type(t);
  f.set_vector_length(len);
  return f;
}

// Reads every chunk of a file; returns the concatenation and checks line numbering.
std::string ReadAll(const std::string& path, size_t target, std::vector<uint64_t>* first_lines = nullptr) {
  auto src = LineSource::Open(path);
  EXPECT_TRUE(src.ok()) << src.status();
  std::string all, chunk;
  uint64_t first = 0, expected = 1;
  while (true) {
    auto more = (*src)->Next(target, 1 << 20, &chunk, &first);
    EXPECT_TRUE(more.ok()) << more.status();
    if (!more.ok() || !*more) break;
    EXPECT_EQ(first, expected);
    expected += std::count(chunk.begin(), chunk.end(), '\n');
    if (first_lines) first_lines->push_back(first);
    all += chunk;
  }
  return all;
}

TEST(LineSourceTest, ChunksAreWholeLinesWithLineNumbers) {
  TempDir dir;
  std::string text;
  for (int i = 1; i <= 1000; ++i) absl::StrAppend(&text, "line ", i, std::string(i % 37, '.'), "\n");
  text += "last line without newline";
  WriteText(dir.File("a.txt"), text);
  std::vector<uint64_t> firsts;
  EXPECT_EQ(ReadAll(dir.File("a.txt"), 500, &firsts), text);
  EXPECT_GT(firsts.size(), 10u);
}

TEST(LineSourceTest, ReadsGzipIncludingConcatenatedMembersAndZstd) {
  TempDir dir;
  std::string text = testing::RecsCsv(0, 5000);
  // gzip, written as two members (what `cat a.gz b.gz` gives).
  for (int part = 0; part < 2; ++part) {
    gzFile g = gzopen(dir.File("in.csv.gz").c_str(), part == 0 ? "wb" : "ab");
    ASSERT_NE(g, nullptr);
    std::string half = part == 0 ? text.substr(0, 40000) : text.substr(40000);
    gzwrite(g, half.data(), static_cast<unsigned>(half.size()));
    gzclose(g);
  }
  EXPECT_EQ(ReadAll(dir.File("in.csv.gz"), 4096), text);
  auto src = LineSource::Open(dir.File("in.csv.gz"));
  EXPECT_EQ((*src)->compression(), "gzip");

  std::string z(ZSTD_compressBound(text.size()), '\0');
  z.resize(ZSTD_compress(z.data(), z.size(), text.data(), text.size(), 3));
  WriteText(dir.File("in.csv.zst"), z);
  EXPECT_EQ(ReadAll(dir.File("in.csv.zst"), 4096), text);

  // Truncated streams are errors, not silently short input.
  WriteText(dir.File("cut.zst"), z.substr(0, z.size() / 2));
  auto cut = LineSource::Open(dir.File("cut.zst"));
  std::string chunk;
  uint64_t first;
  absl::Status st;
  while (true) {
    auto more = (*cut)->Next(4096, 1 << 20, &chunk, &first);
    if (!more.ok()) {
      st = more.status();
      break;
    }
    if (!*more) break;
  }
  EXPECT_EQ(st.code(), absl::StatusCode::kDataLoss) << st;
}

TEST(LineSourceTest, OverlongLineIsAnErrorNamingTheLine) {
  TempDir dir;
  WriteText(dir.File("a.txt"), "short\n" + std::string(200000, 'x') + "\n");
  auto src = LineSource::Open(dir.File("a.txt"));
  std::string chunk;
  uint64_t first;
  auto r1 = (*src)->Next(100, 1000, &chunk, &first);
  EXPECT_EQ(chunk, "short\n");
  ASSERT_TRUE(r1.ok());
  auto r2 = (*src)->Next(100, 1000, &chunk, &first);
  ASSERT_FALSE(r2.ok());
  EXPECT_NE(r2.status().message().find(":2: line longer than 1000"), std::string::npos) << r2.status();
}

TEST(FormatTest, FromNames) {
  EXPECT_EQ(FormatFromName("x/a.csv.gz"), InputFormat::kCsv);
  EXPECT_EQ(FormatFromName("a.TSV"), InputFormat::kTsv);
  EXPECT_EQ(FormatFromName("a.jsonl.zst"), InputFormat::kJsonl);
  EXPECT_FALSE(FormatFromName("a.txt").has_value());
}

TEST(RowParserTest, CsvQuotingAndRecs) {
  auto o = Options(InputFormat::kCsv, v1::DATASET_KIND_RECS);
  RowParser p(o);
  ColumnMap cols = *MakeColumnMap(o, std::nullopt);
  absl::string_view key;
  std::string value;
  ASSERT_TRUE(p.Parse("u1,1:0.5|2:0.25", cols, &key, &value).ok());
  EXPECT_EQ(key, "u1");
  ASSERT_TRUE(p.Parse("\"u,2\",\"a:1\"", cols, &key, &value).ok());
  EXPECT_EQ(key, "u,2");
  ASSERT_TRUE(p.Parse("\"say \"\"hi\"\"\",a:1", cols, &key, &value).ok());
  EXPECT_EQ(key, "say \"hi\"");
  EXPECT_NE(p.Parse("u3", cols, &key, &value).message().find("expected at least 2 columns, got 1"), std::string::npos);
  EXPECT_NE(p.Parse("\"u4,a:1", cols, &key, &value).message().find("unterminated"), std::string::npos);
  EXPECT_NE(p.Parse(",a:1", cols, &key, &value).message().find("empty key"), std::string::npos);
  EXPECT_NE(p.Parse("u5,a:zz", cols, &key, &value).message().find("score"), std::string::npos);
  EXPECT_NE(p.Parse("bad\xff,a:1", cols, &key, &value).message().find("UTF-8"), std::string::npos);
}

TEST(RowParserTest, TsvWithHeaderPicksNamedColumns) {
  auto o = Options(InputFormat::kTsv, v1::DATASET_KIND_JSON);
  o.header = true;
  o.key_column = "user";
  o.value_column = "doc";
  auto cols = MakeColumnMap(o, absl::string_view("doc\tother\tuser"));
  ASSERT_TRUE(cols.ok()) << cols.status();
  RowParser p(o);
  absl::string_view key;
  std::string value;
  ASSERT_TRUE(p.Parse("{ \"a\" : [1, 2] }\tx\tu9", *cols, &key, &value).ok());
  EXPECT_EQ(key, "u9");
  EXPECT_EQ(value.substr(1), "{\"a\":[1,2]}") << "stored minified";
  EXPECT_NE(p.Parse("{bad\tx\tu9", *cols, &key, &value).message().find("invalid JSON"), std::string::npos);
  o.key_column = "nope";
  auto missing = MakeColumnMap(o, absl::string_view("doc\tuser"));
  EXPECT_NE(missing.status().message().find("\"nope\" is not in the header"), std::string::npos);
}

TEST(RowParserTest, RecordFromCsvHeaderAndJsonLines) {
  std::vector<v1::FeatureSpec> fields = {Spec("age", v1::INT32), Spec("emb", v1::FLOAT32_VECTOR, 2),
                                         Spec("city", v1::STRING)};
  auto o = Options(InputFormat::kCsv, v1::DATASET_KIND_RECORD, fields);
  o.header = true;
  auto cols = MakeColumnMap(o, absl::string_view("id,city,age,emb"));
  ASSERT_TRUE(cols.ok()) << cols.status();
  RowParser p(o);
  absl::string_view key;
  std::string value;
  ASSERT_TRUE(p.Parse("u1,Pune,31,\"[0.5,1.5]\"", *cols, &key, &value).ok());
  v1::DatasetValue v;
  ASSERT_TRUE(DecodeValue(o.schema, value, &v).ok());
  EXPECT_EQ(v.record().values(0).int32_value(), 31);
  EXPECT_EQ(v.record().values(2).string_value(), "Pune");
  ASSERT_TRUE(p.Parse("u2,,40,", *cols, &key, &value).ok());  // empty cells are unset
  v.Clear();
  ASSERT_TRUE(DecodeValue(o.schema, value, &v).ok());
  EXPECT_EQ(v.record().values(0).int32_value(), 40);
  EXPECT_FALSE(v.record().present(1));
  EXPECT_FALSE(v.record().present(2));
  EXPECT_NE(p.Parse("u3,Pune,old,", *cols, &key, &value).message().find("field \"age\""), std::string::npos);
  auto typo = MakeColumnMap(o, absl::string_view("id,citty,age"));
  EXPECT_NE(typo.status().message().find("\"citty\" is not a field"), std::string::npos);

  auto j = Options(InputFormat::kJsonl, v1::DATASET_KIND_RECORD, fields);
  RowParser jp(j);
  ColumnMap none;
  ASSERT_TRUE(jp.Parse(R"({"key": 17, "age": 5, "emb": [1, 2], "city": null})", none, &key, &value).ok());
  EXPECT_EQ(key, "17");
  v1::DatasetValue jv;
  ASSERT_TRUE(DecodeValue(j.schema, value, &jv).ok());
  EXPECT_EQ(jv.record().values(0).int32_value(), 5);
  EXPECT_FALSE(jv.record().present(2));
  EXPECT_NE(jp.Parse(R"({"key": "a", "agee": 5})", none, &key, &value).message().find("\"agee\""), std::string::npos);
  EXPECT_NE(jp.Parse(R"({"key": "a", "age": "5"})", none, &key, &value).message().find("expected INT32"),
            std::string::npos);
  EXPECT_NE(jp.Parse(R"({"key": "a", "age": 3000000000})", none, &key, &value).message().find("expected INT32"),
            std::string::npos);
}

TEST(RowParserTest, JsonLinesRecsForms) {
  auto o = Options(InputFormat::kJsonl, v1::DATASET_KIND_RECS);
  RowParser p(o);
  ColumnMap none;
  absl::string_view key;
  std::string value;
  v1::DatasetValue v;
  ASSERT_TRUE(p.Parse(R"({"key":"u1","value":[[11,0.5],["sku",0.25]]})", none, &key, &value).ok());
  ASSERT_TRUE(DecodeValue(o.schema, value, &v).ok());
  EXPECT_EQ(v.recs().items(0).item_id(), "11");
  EXPECT_EQ(v.recs().items(1).item_id(), "sku");
  ASSERT_TRUE(p.Parse(R"({"key":"u1","value":[{"item_id":5,"score":1}]})", none, &key, &value).ok());
  ASSERT_TRUE(p.Parse(R"({"key":"u1","value":"5:1|6:2"})", none, &key, &value).ok());
  EXPECT_NE(p.Parse(R"({"key":"u1","value":[[1]]})", none, &key, &value).message().find("\"value\"[0]"),
            std::string::npos);
  EXPECT_NE(p.Parse(R"({"value":[]})", none, &key, &value).message().find("no \"key\""), std::string::npos);
  EXPECT_NE(p.Parse(R"([1,2])", none, &key, &value).message().find("JSON object"), std::string::npos);
  EXPECT_NE(p.Parse(R"({"key":)", none, &key, &value).message().find("invalid JSON"), std::string::npos);
}

}  // namespace
}  // namespace kosh::datasets
