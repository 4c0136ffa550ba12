#include "interactions/history.h"

#include <algorithm>
#include <charconv>
#include <cstring>

namespace kosh::interactions {
namespace {

constexpr uint8_t kBlockMagic = 0x30;       // high nibble: block format version 1 (0x3_)
constexpr uint8_t kFlagPayloads = 0x01;     // every event carries a length-prefixed payload
constexpr uint64_t kMaxNumericItem = (1ull << 63) - 1;

uint64_t ZigZag(int64_t v) { return (static_cast<uint64_t>(v) << 1) ^ static_cast<uint64_t>(v >> 63); }
int64_t UnZigZag(uint64_t v) { return static_cast<int64_t>(v >> 1) ^ -static_cast<int64_t>(v & 1); }

// The item id of `ev` as a string, using `buf` (>= 20 bytes) for numeric ids.
absl::string_view ItemText(const EventView& ev, char* buf) {
  if (!ev.item_numeric) return ev.item_str;
  auto r = std::to_chars(buf, buf + 20, ev.item_num);
  return absl::string_view(buf, static_cast<size_t>(r.ptr - buf));
}

int CompareItems(const EventView& a, const EventView& b) {
  if (a.item_numeric && b.item_numeric) {
    if (a.item_num == b.item_num) return 0;
  } else if (!a.item_numeric && !b.item_numeric) {
    int c = a.item_str.compare(b.item_str);
    return c < 0 ? -1 : c > 0 ? 1 : 0;
  }
  char ba[24], bb[24];
  int c = ItemText(a, ba).compare(ItemText(b, bb));
  return c < 0 ? -1 : c > 0 ? 1 : 0;
}

}  // namespace

void PutVarint(std::string* out, uint64_t v) {
  while (v >= 0x80) {
    out->push_back(static_cast<char>(v | 0x80));
    v >>= 7;
  }
  out->push_back(static_cast<char>(v));
}

bool GetVarint(absl::string_view* in, uint64_t* v) {
  uint64_t result = 0;
  size_t i = 0;
  for (int shift = 0; shift <= 63 && i < in->size(); shift += 7) {
    uint8_t b = static_cast<uint8_t>((*in)[i++]);
    result |= static_cast<uint64_t>(b & 0x7f) << shift;
    if ((b & 0x80) == 0) {
      in->remove_prefix(i);
      *v = result;
      return true;
    }
  }
  return false;
}

bool ParseNumericItem(absl::string_view item, uint64_t* out) {
  if (item.empty() || item.size() > 19) return false;
  if (item[0] == '0' && item.size() > 1) return false;
  uint64_t v = 0;
  for (char c : item) {
    if (c < '0' || c > '9') return false;
    v = v * 10 + static_cast<uint64_t>(c - '0');  // 19 digits cannot overflow 64 bits
  }
  if (v > kMaxNumericItem) return false;
  *out = v;
  return true;
}

void SetItem(absl::string_view item, EventView* ev) {
  ev->item_numeric = ParseNumericItem(item, &ev->item_num);
  ev->item_str = ev->item_numeric ? absl::string_view() : item;
}

std::string ItemString(const EventView& ev) {
  std::string s;
  AppendItemString(ev, &s);
  return s;
}

void AppendItemString(const EventView& ev, std::string* out) {
  char buf[24];
  absl::string_view t = ItemText(ev, buf);
  out->append(t.data(), t.size());
}

int CompareEvents(const EventView& a, const EventView& b) {
  if (a.ts_ms != b.ts_ms) return a.ts_ms > b.ts_ms ? -1 : 1;
  return CompareItems(a, b);
}

BlockReader::BlockReader(absl::string_view block) : in_(block) {
  if (in_.empty() || (static_cast<uint8_t>(in_[0]) & 0xf0) != kBlockMagic ||
      (static_cast<uint8_t>(in_[0]) & 0x0e) != 0) {
    corrupt_ = true;
    return;
  }
  payloads_ = (static_cast<uint8_t>(in_[0]) & kFlagPayloads) != 0;
  in_.remove_prefix(1);
  if (!GetVarint(&in_, &count_) || count_ > in_.size()) {  // every event takes >= 2 bytes
    corrupt_ = true;
    count_ = 0;
  }
}

bool BlockReader::Next(EventView* ev) {
  if (corrupt_ || read_ >= count_) return false;
  uint64_t t, tag;
  if (!GetVarint(&in_, &t) || !GetVarint(&in_, &tag)) {
    corrupt_ = true;
    return false;
  }
  if (read_ == 0) {
    ev->ts_ms = UnZigZag(t);
  } else {
    if (t > static_cast<uint64_t>(prev_ts_) - static_cast<uint64_t>(std::numeric_limits<int64_t>::min())) {
      corrupt_ = true;  // the delta would step below INT64_MIN
      return false;
    }
    ev->ts_ms = static_cast<int64_t>(static_cast<uint64_t>(prev_ts_) - t);
  }
  prev_ts_ = ev->ts_ms;
  if (tag & 1) {
    ev->item_numeric = true;
    ev->item_num = tag >> 1;
    ev->item_str = {};
  } else {
    uint64_t len = tag >> 1;
    if (len > in_.size()) {
      corrupt_ = true;
      return false;
    }
    ev->item_numeric = false;
    ev->item_num = 0;
    ev->item_str = in_.substr(0, len);
    in_.remove_prefix(len);
  }
  ev->payload = {};
  if (payloads_) {
    uint64_t len;
    if (!GetVarint(&in_, &len) || len > in_.size()) {
      corrupt_ = true;
      return false;
    }
    ev->payload = in_.substr(0, len);
    in_.remove_prefix(len);
  }
  ++read_;
  return true;
}

bool IsEmptyBlock(absl::string_view block) {
  BlockReader r(block);
  return !r.corrupt() && r.count() == 0;
}

void EncodeBlock(absl::Span<const EventView> events, std::string* out) {
  bool payloads = false;
  size_t bytes = 2;
  for (const EventView& e : events) {
    payloads |= !e.payload.empty();
    bytes += 6 + e.item_str.size() + e.payload.size();
  }
  out->clear();
  out->reserve(bytes + (payloads ? events.size() : 0));
  out->push_back(static_cast<char>(kBlockMagic | (payloads ? kFlagPayloads : 0)));
  PutVarint(out, events.size());
  int64_t prev = 0;
  for (size_t i = 0; i < events.size(); ++i) {
    const EventView& e = events[i];
    if (i == 0) {
      PutVarint(out, ZigZag(e.ts_ms));
    } else {
      PutVarint(out, static_cast<uint64_t>(prev) - static_cast<uint64_t>(e.ts_ms));
    }
    prev = e.ts_ms;
    if (e.item_numeric) {
      PutVarint(out, (e.item_num << 1) | 1);
    } else {
      PutVarint(out, static_cast<uint64_t>(e.item_str.size()) << 1);
      out->append(e.item_str.data(), e.item_str.size());
    }
    if (payloads) {
      PutVarint(out, e.payload.size());
      out->append(e.payload.data(), e.payload.size());
    }
  }
}

void SortUnique(std::vector<EventView>* events) {
  // Among duplicates, the greater payload sorts first so that unique() keeps it.
  std::sort(events->begin(), events->end(), [](const EventView& a, const EventView& b) {
    int c = CompareEvents(a, b);
    if (c != 0) return c < 0;
    return a.payload > b.payload;
  });
  auto last = std::unique(events->begin(), events->end(),
                          [](const EventView& a, const EventView& b) { return CompareEvents(a, b) == 0; });
  events->erase(last, events->end());
}

bool MergeBlocks(absl::Span<const absl::string_view> blocks, const TrimSpec& trim, std::string* out,
                 MergeStats* stats) {
  struct Cursor {
    BlockReader reader;
    EventView cur;
  };
  std::vector<Cursor> cursors;
  cursors.reserve(blocks.size());
  uint64_t events_in = 0;
  for (absl::string_view b : blocks) {
    cursors.push_back({BlockReader(b), {}});
    if (cursors.back().reader.corrupt()) return false;
    events_in += cursors.back().reader.count();
  }
  // A heap of cursor indices ordered by their current event (the next one in history order on top).
  auto after = [&](size_t a, size_t b) {  // "a comes after b": std heaps keep the max on top
    int c = CompareEvents(cursors[a].cur, cursors[b].cur);
    if (c != 0) return c > 0;
    return cursors[a].cur.payload < cursors[b].cur.payload;
  };
  std::vector<size_t> heap;
  heap.reserve(cursors.size());
  for (size_t i = 0; i < cursors.size(); ++i) {
    if (cursors[i].reader.Next(&cursors[i].cur)) heap.push_back(i);
    if (cursors[i].reader.corrupt()) return false;
  }
  std::make_heap(heap.begin(), heap.end(), after);

  std::vector<EventView> merged;
  merged.reserve(static_cast<size_t>(std::min<uint64_t>(trim.cap, events_in)));
  uint64_t duplicates = 0;
  while (!heap.empty()) {
    std::pop_heap(heap.begin(), heap.end(), after);
    size_t i = heap.back();
    const EventView& e = cursors[i].cur;
    if (!merged.empty() && CompareEvents(merged.back(), e) == 0) {
      // Duplicates pop consecutively, the greatest payload first: keep that one.
      ++duplicates;
    } else {
      if (e.ts_ms < trim.cutoff_ms || merged.size() >= trim.cap) break;  // the rest is older
      merged.push_back(e);
    }
    if (cursors[i].reader.Next(&cursors[i].cur)) {
      std::push_heap(heap.begin(), heap.end(), after);
    } else {
      if (cursors[i].reader.corrupt()) return false;
      heap.pop_back();
    }
  }
  EncodeBlock(merged, out);
  if (stats != nullptr) {
    stats->events_in = events_in;
    stats->events_out = merged.size();
    // Events left in the inputs after the trim stopped the merge are counted as dropped even if
    // some of them were duplicates of each other; with a single input block the counts are exact.
    stats->duplicates = duplicates;
    stats->dropped = events_in - merged.size() - duplicates;
  }
  return true;
}

bool ParseRecord(absl::string_view record, std::vector<RecordEntry>* out) {
  out->clear();
  while (!record.empty()) {
    uint64_t id, len;
    if (!GetVarint(&record, &id) || !GetVarint(&record, &len) || len > record.size() || id > UINT32_MAX) {
      return false;
    }
    out->push_back({static_cast<uint32_t>(id), record.substr(0, len)});
    record.remove_prefix(len);
  }
  return true;
}

absl::string_view FindBlock(absl::string_view record, uint32_t type_id) {
  while (!record.empty()) {
    uint64_t id, len;
    if (!GetVarint(&record, &id) || !GetVarint(&record, &len) || len > record.size()) return {};
    if (id == type_id) return record.substr(0, len);
    if (id > type_id) return {};
    record.remove_prefix(len);
  }
  return {};
}

void AppendRecordEntry(uint32_t type_id, absl::string_view block, std::string* out) {
  PutVarint(out, type_id);
  PutVarint(out, block.size());
  out->append(block.data(), block.size());
}

}  // namespace kosh::interactions
