// IntrusiveList<T>: a doubly linked list threaded through the elements' own `T* prev` and `T* next`
// members, so linking and unlinking allocate nothing. For recency orders (LRU, CLOCK) kept under
// the caller's lock; not thread-safe by itself. The list does not own its elements.
#pragma once

namespace kosh::base {

template <typename T>
class IntrusiveList {
 public:
  T* front() const { return head_; }  // most recently pushed
  T* back() const { return tail_; }   // least recently pushed
  bool empty() const { return head_ == nullptr; }

  void PushFront(T* e) {
    e->prev = nullptr;
    e->next = head_;
    if (head_ != nullptr) head_->prev = e;
    head_ = e;
    if (tail_ == nullptr) tail_ = e;
  }
  // Unlinks `e`, which must be in this list.
  void Remove(T* e) {
    (e->prev != nullptr ? e->prev->next : head_) = e->next;
    (e->next != nullptr ? e->next->prev : tail_) = e->prev;
    e->prev = e->next = nullptr;
  }
  void MoveToFront(T* e) {
    if (head_ == e) return;
    Remove(e);
    PushFront(e);
  }

 private:
  T* head_ = nullptr;
  T* tail_ = nullptr;
};

}  // namespace kosh::base
