// What band_loss returns on the host: the aggregated loss and its metrics (tables.h BANDPO_METRIC_TABLE
// order). Its own header so that code shared with CUDA (core/aggregation.h) needs nothing of the CPU API.
#pragma once

#include "bandpo/options.h"

namespace bandpo {

struct LossResult {
  double loss = 0.0;
  float metrics[kNumMetrics] = {};
};

}  // namespace bandpo
