#include "datasets/value_codec.h"

#include "datasets/test_util.h"
#include "gtest/gtest.h"

namespace kosh::datasets {
namespace {

v1::FeatureSpec Spec(const std::string& name, v1::FeatureType t, uint32_t len = 0) {
  v1::FeatureSpec f;
  f.set_name(name);
  f.set_type(t);
  f.set_vector_length(len);
  return f;
}

TEST(KindTest, ParsesNamesAndRejectsOthers) {
  EXPECT_EQ(*ParseKind("recs"), v1::DATASET_KIND_RECS);
  EXPECT_EQ(*ParseKind("RECORD"), v1::DATASET_KIND_RECORD);
  EXPECT_EQ(*ParseKind("DATASET_KIND_JSON"), v1::DATASET_KIND_JSON);
  EXPECT_EQ(*ParseKind("bytes"), v1::DATASET_KIND_BYTES);
  auto bad = ParseKind("table");
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(bad.status().message().find("bytes, json, recs, record"), std::string::npos);
}

TEST(SchemaTest, ValidatesRecordFields) {
  EXPECT_FALSE(MakeSchema(v1::DATASET_KIND_RECORD, {}).ok());
  EXPECT_FALSE(MakeSchema(v1::DATASET_KIND_RECS, {Spec("a", v1::INT32)}).ok());
  auto dup = MakeSchema(v1::DATASET_KIND_RECORD, {Spec("a", v1::INT32), Spec("a", v1::INT64)});
  EXPECT_NE(dup.status().message().find("fields[1].name: duplicate"), std::string::npos) << dup.status();
  auto nolen = MakeSchema(v1::DATASET_KIND_RECORD, {Spec("v", v1::FLOAT32_VECTOR)});
  EXPECT_NE(nolen.status().message().find("fields[0].length"), std::string::npos) << nolen.status();
  auto ok = MakeSchema(v1::DATASET_KIND_RECORD, {Spec("a", v1::INT32), Spec("v", v1::FLOAT32_VECTOR, 3)});
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_EQ(ok->Describe(), "RECORD(a INT32, v FLOAT32_VECTOR(3))");
  auto other = MakeSchema(v1::DATASET_KIND_RECORD, {Spec("a", v1::INT32), Spec("v", v1::FLOAT32_VECTOR, 4)});
  EXPECT_FALSE(*ok == *other);
  EXPECT_TRUE(*ok == *MakeSchema(v1::DATASET_KIND_RECORD, {Spec("a", v1::INT32), Spec("v", v1::FLOAT32_VECTOR, 3)}));
}

TEST(RecsTest, NumericIdsRoundTripCompactly) {
  std::vector<RecItemView> items;
  ASSERT_TRUE(ParseRecsText("123:0.5| 7 : 0.25|18446744073709551615:1e-3", &items).ok());
  ASSERT_EQ(items.size(), 3u);
  std::string enc;
  ASSERT_TRUE(EncodeRecs(items, &enc).ok());
  EXPECT_EQ(static_cast<uint8_t>(enc[0]), 0x11) << "numeric ids flag";
  EXPECT_LT(enc.size(), 1 + 1 + (1 + 1 + 10) + 12 + 1) << "varint ids";
  v1::DatasetValue v;
  ASSERT_TRUE(DecodeValue(*MakeSchema(v1::DATASET_KIND_RECS, {}), enc, &v).ok());
  ASSERT_EQ(v.recs().items_size(), 3);
  EXPECT_EQ(v.recs().items(0).item_id(), "123");
  EXPECT_FLOAT_EQ(v.recs().items(0).score(), 0.5f);
  EXPECT_EQ(v.recs().items(1).item_id(), "7");
  EXPECT_EQ(v.recs().items(2).item_id(), "18446744073709551615");
  EXPECT_FLOAT_EQ(v.recs().items(2).score(), 0.001f);
}

TEST(RecsTest, StringIdsKeepTheirSpelling) {
  std::vector<RecItemView> items;
  ASSERT_TRUE(ParseRecsText("007:1|sku-9:2|42:3", &items).ok());  // "007" is not canonical
  std::string enc;
  ASSERT_TRUE(EncodeRecs(items, &enc).ok());
  EXPECT_EQ(static_cast<uint8_t>(enc[0]), 0x10);
  v1::DatasetValue v;
  ASSERT_TRUE(DecodeValue(*MakeSchema(v1::DATASET_KIND_RECS, {}), enc, &v).ok());
  EXPECT_EQ(v.recs().items(0).item_id(), "007");
  EXPECT_EQ(v.recs().items(1).item_id(), "sku-9");
  EXPECT_FLOAT_EQ(v.recs().items(2).score(), 3.0f);
}

TEST(RecsTest, MalformedTextIsRejected) {
  std::vector<RecItemView> items;
  EXPECT_TRUE(ParseRecsText("", &items).ok());
  EXPECT_TRUE(items.empty());
  EXPECT_NE(ParseRecsText("a:1|b", &items).message().find("item 1"), std::string::npos);
  EXPECT_NE(ParseRecsText("a:x", &items).message().find("score"), std::string::npos);
  EXPECT_NE(ParseRecsText("a:nan", &items).message().find("finite"), std::string::npos);
  EXPECT_FALSE(ParseRecsText(":1", &items).ok());
}

TEST(RecsTest, OnePassTextEncodingMatchesParseThenEncode) {
  for (const char* text : {"1:0.5|2:0.25", " 7 : 1e-3 | 0:-2.5 ", "sku-1:0.1|2:0.2", "1:0.1|007:0.2",
                           "18446744073709551615:1|18446744073709551616:2", "a:b:0.5", "x:123456789.123456789",
                           "", "1:0.30000001192092896", "1:.5|2:5.|3:+4"}) {
    std::vector<RecItemView> items;
    std::string a, b;
    ASSERT_TRUE(ParseRecsText(text, &items).ok()) << text;
    ASSERT_TRUE(EncodeRecs(items, &a).ok()) << text;
    ASSERT_TRUE(EncodeRecsText(text, &b).ok()) << text;
    EXPECT_EQ(a, b) << text;
  }
  std::string out;
  EXPECT_NE(EncodeRecsText("a:1|b", &out).message().find("item 1"), std::string::npos);
  EXPECT_NE(EncodeRecsText("a:1|", &out).message().find("item 1"), std::string::npos);
  EXPECT_NE(EncodeRecsText("a:x", &out).message().find("score \"x\" is not a finite number"), std::string::npos);
  EXPECT_NE(EncodeRecsText("a:inf", &out).message().find("finite"), std::string::npos);
  EXPECT_NE(EncodeRecsText(":1", &out).message().find("empty item id"), std::string::npos);
  EXPECT_NE(EncodeRecsText("\xff:1", &out).message().find("UTF-8"), std::string::npos);
}

TEST(RecsTest, CorruptValuesAreDataLoss) {
  auto schema = *MakeSchema(v1::DATASET_KIND_RECS, {});
  v1::DatasetValue v;
  EXPECT_EQ(DecodeValue(schema, "", &v).code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(DecodeValue(schema, std::string("\x11\x05\x01", 3), &v).code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(DecodeValue(schema, std::string("\x20\x00", 2), &v).code(), absl::StatusCode::kDataLoss);
}

TEST(BytesTest, EncodingsDecode) {
  auto schema = *MakeSchema(v1::DATASET_KIND_BYTES, {});
  std::string enc;
  ASSERT_TRUE(EncodeBytesText("aGVsbG8=", BytesEncoding::kBase64, &enc).ok());
  v1::DatasetValue v;
  ASSERT_TRUE(DecodeValue(schema, enc, &v).ok());
  EXPECT_EQ(v.bytes_value(), "hello");
  ASSERT_TRUE(EncodeBytesText("00ff41", BytesEncoding::kHex, &enc).ok());
  ASSERT_TRUE(DecodeValue(schema, enc, &v).ok());
  EXPECT_EQ(v.bytes_value(), std::string("\x00\xff\x41", 3));
  EXPECT_FALSE(EncodeBytesText("abc", BytesEncoding::kHex, &enc).ok());
  EXPECT_FALSE(EncodeBytesText("!!!", BytesEncoding::kBase64, &enc).ok());
}

TEST(RecordTest, EncodesTypedFieldsWithPresence) {
  auto schema = MakeSchema(v1::DATASET_KIND_RECORD,
                           {Spec("age", v1::INT32), Spec("city", v1::STRING), Spec("emb", v1::FLOAT32_VECTOR, 3)});
  ASSERT_TRUE(schema.ok());
  v1::Value age, emb;
  ASSERT_TRUE(ParseCell(schema->fields[0], " 31 ", &age).ok());
  ASSERT_TRUE(ParseCell(schema->fields[2], "[0.5, 1, -2]", &emb).ok());
  std::vector<int> fields = {0, 2};
  std::vector<const v1::Value*> values = {&age, &emb};
  std::string enc;
  ASSERT_TRUE(EncodeRecord(*schema, fields, values, &enc).ok());
  v1::DatasetValue v;
  ASSERT_TRUE(DecodeValue(*schema, enc, &v).ok());
  ASSERT_EQ(v.record().values_size(), 3);
  EXPECT_EQ(v.record().values(0).int32_value(), 31);
  EXPECT_TRUE(v.record().present(0));
  EXPECT_FALSE(v.record().present(1));
  EXPECT_EQ(v.record().values(1).string_value(), "");
  EXPECT_EQ(v.record().values(2).float_list().values_size(), 3);
  EXPECT_FLOAT_EQ(v.record().values(2).float_list().values(2), -2.0f);

  v1::Value bad;
  EXPECT_FALSE(ParseCell(schema->fields[0], "3.5", &bad).ok());
  ASSERT_TRUE(ParseCell(schema->fields[2], "1 2", &bad).ok());
  std::vector<const v1::Value*> wrong_len = {&bad};
  std::vector<int> f2 = {2};
  auto st = EncodeRecord(*schema, f2, wrong_len, &enc);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("emb"), std::string::npos) << st;
}

TEST(Utf8Test, Validates) {
  EXPECT_TRUE(IsValidUtf8("plain ascii text that is long enough"));
  EXPECT_TRUE(IsValidUtf8("caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80"));
  EXPECT_FALSE(IsValidUtf8("bad \xc3"));
  EXPECT_FALSE(IsValidUtf8("overlong \xc0\xaf"));
  EXPECT_FALSE(IsValidUtf8("surrogate \xed\xa0\x80"));
}

TEST(RecordFieldsTest, LoadsTheYamlFileWithPathsInErrors) {
  testing::TempDir dir;
  testing::WriteText(dir.File("f.yaml"), "fields:\n  - {name: age, type: int32, default: -1}\n  - {name: emb, type: float16_vector, length: 2}\n");
  auto f = LoadRecordFields(dir.File("f.yaml"));
  ASSERT_TRUE(f.ok()) << f.status();
  ASSERT_EQ(f->size(), 2u);
  EXPECT_EQ((*f)[0].default_value().int32_value(), -1);
  testing::WriteText(dir.File("g.yaml"), "fields:\n  - {name: age, type: int33}\n");
  auto g = LoadRecordFields(dir.File("g.yaml"));
  EXPECT_NE(g.status().message().find("fields[0].type"), std::string::npos) << g.status();
  EXPECT_NE(g.status().message().find("g.yaml"), std::string::npos) << g.status();
}

}  // namespace
}  // namespace kosh::datasets
