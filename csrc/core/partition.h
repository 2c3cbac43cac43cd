// Internal: the fixed partition of a [rows, cols] problem into items, and the sums each item produces.
#pragma once

#include <algorithm>
#include <cstdint>

#include "aggregation.h"
#include "bandpo/cpu.h"

namespace bandpo {
namespace detail {

// The fixed partition of a [rows, cols] problem into items of at most kItemTokens tokens: whole rows when
// rows are short, otherwise chunks of one row. It depends only on the shape, never on the thread count.
struct Partition {
  int64_t rows, cols;
  int64_t rows_per_item;   // > 0: items are groups of whole rows
  int64_t chunks_per_row;  // > 0: items are chunks of one row
  int64_t n_items;

  Partition(int64_t rows_, int64_t cols_) : rows(rows_), cols(cols_) {
    if (cols <= kItemTokens) {
      rows_per_item = cols > 0 ? std::max<int64_t>(1, kItemTokens / cols) : std::max<int64_t>(rows, 1);
      chunks_per_row = 0;
      n_items = rows > 0 ? (rows + rows_per_item - 1) / rows_per_item : 0;
    } else {
      rows_per_item = 0;
      chunks_per_row = (cols + kItemTokens - 1) / kItemTokens;
      n_items = rows * chunks_per_row;
    }
  }
  bool whole_rows() const { return rows_per_item > 0; }

  // Calls f(row, begin, end) for the segments of item `item`, in order.
  template <class F>
  void for_each_segment(int64_t item, F&& f) const {
    if (whole_rows()) {
      const int64_t r_end = std::min(rows, (item + 1) * rows_per_item);
      for (int64_t r = item * rows_per_item; r < r_end; ++r) f(r, r * cols, (r + 1) * cols);
    } else {
      const int64_t r = item / chunks_per_row, c = item % chunks_per_row;
      f(r, r * cols + c * kItemTokens, r * cols + std::min(cols, (c + 1) * kItemTokens));
    }
  }
};

// Per item: the sums over its tokens, and for whole-row items the sum over its rows of the per-row means
// (seq-mean-token-mean).
struct ItemSums {
  SegmentSums tokens;
  double row_mean_loss = 0;
  double row_mean_pg = 0;
};

}  // namespace detail
}  // namespace bandpo
