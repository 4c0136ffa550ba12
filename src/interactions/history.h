// The encoding of event histories and the one function that orders, de-duplicates and trims them.
//
// A *block* holds the events of one (user, event type) history, newest first. The cold tier stores
// one block per history and appends new events as merge operands that are themselves blocks; the
// hot tier keeps a user's blocks in one *record*. Both tiers combine blocks with MergeBlocks only,
// so they cannot disagree about order, duplicates or trimming. docs/formats.md has the byte layout.
//
// Order: newer timestamps first; equal timestamps by item id ascending (compared as strings).
// Duplicates: events with the same timestamp and item id are one event. If their payloads differ,
// the greater payload (bytewise) is kept: a rule that does not depend on arrival order, so merging
// is commutative as well as associative and every tier converges to the same history.
// Trim: after merging, only the newest `cap` events with timestamp >= `cutoff_ms` are kept. Taking
// the top `cap` distributes over union (top(A u B) = top(top(A) u B)), so trimming early is safe.
//
// All functions are pure and thread-safe.
#pragma once

#include <cstdint>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/string_view.h"
#include "absl/types/span.h"

namespace kosh::interactions {

// One decoded event. Views point into the block (or request) it was decoded from.
struct EventView {
  int64_t ts_ms = 0;
  bool item_numeric = false;  // item id is a canonical decimal number < 2^63, held in item_num
  uint64_t item_num = 0;
  absl::string_view item_str;  // the item id when !item_numeric
  absl::string_view payload;   // encoded payload (see payload.h); empty when the type has none
};

// True if `item` is a canonical decimal number below 2^63: digits only, no leading zero unless it
// is "0". Such ids are stored as varints (a 7-digit id takes 4 bytes instead of 8).
bool ParseNumericItem(absl::string_view item, uint64_t* out);
// Sets the item of `ev` from an id string, which must outlive `ev`.
void SetItem(absl::string_view item, EventView* ev);
// The item id of `ev` as the string that was written.
std::string ItemString(const EventView& ev);
void AppendItemString(const EventView& ev, std::string* out);

// < 0 if `a` comes before `b` (is newer, or as new with a smaller item id), 0 if they are the same
// event (same timestamp and item), > 0 otherwise.
int CompareEvents(const EventView& a, const EventView& b);

// Sequential decoder of one block. A default-constructed or malformed block reads as corrupt.
class BlockReader {
 public:
  explicit BlockReader(absl::string_view block);
  // Number of events the header announces (0 if corrupt).
  uint64_t count() const { return count_; }
  // Decodes the next event into *ev. False at the end or on corruption.
  bool Next(EventView* ev);
  // The header or an event failed to decode.
  bool corrupt() const { return corrupt_; }

 private:
  absl::string_view in_;
  uint64_t count_ = 0;
  uint64_t read_ = 0;
  int64_t prev_ts_ = 0;
  bool payloads_ = false;
  bool corrupt_ = false;
};

// True if `block` decodes as a block with zero events (used to drop empty histories).
bool IsEmptyBlock(absl::string_view block);

// Encodes `events`, which must be in order and free of duplicates, as a block (replacing *out).
void EncodeBlock(absl::Span<const EventView> events, std::string* out);

// Sorts `events` into history order and removes duplicates (keeping the greater payload).
void SortUnique(std::vector<EventView>* events);

struct TrimSpec {
  uint64_t cap = std::numeric_limits<uint64_t>::max();
  int64_t cutoff_ms = std::numeric_limits<int64_t>::min();  // events older than this are dropped
};

struct MergeStats {
  uint64_t events_in = 0;     // events in all input blocks
  uint64_t events_out = 0;    // events in the result
  uint64_t duplicates = 0;    // input events that were duplicates of another
  uint64_t dropped = 0;       // distinct events removed by the cap or the cutoff
};

// Merges blocks, each in order and free of duplicates, into one block trimmed by `trim`
// (replacing *out). False if any block is corrupt (then *out is unspecified).
bool MergeBlocks(absl::Span<const absl::string_view> blocks, const TrimSpec& trim, std::string* out,
                 MergeStats* stats = nullptr);

// A user *record*: the blocks of one user's histories, as (varint type id, varint length, block)
// entries in ascending type id order.
struct RecordEntry {
  uint32_t type_id;
  absl::string_view block;
};
// Splits a record into its entries. False if malformed.
bool ParseRecord(absl::string_view record, std::vector<RecordEntry>* out);
// The block of `type_id` in `record`, or an empty view when absent (or malformed).
absl::string_view FindBlock(absl::string_view record, uint32_t type_id);
// Appends one entry; callers append in ascending type id order.
void AppendRecordEntry(uint32_t type_id, absl::string_view block, std::string* out);

// Varint helpers shared by the interaction store's encodings (LEB128, as in the feature codec).
void PutVarint(std::string* out, uint64_t v);
bool GetVarint(absl::string_view* in, uint64_t* v);

}  // namespace kosh::interactions
