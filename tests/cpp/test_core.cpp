// ctest for the C++ API of the core library (no torch, no Python): bounds against the 50-digit mpmath
// table, the gradient of band_loss_cpu against central finite differences, and the bad-argument paths.
#include <bandpo/cpu.h>
#include <bandpo/lm_head.h>
#include <bandpo/version.h>

#include "cuda_driver.h"

#include <cmath>
#include <cstdio>
#include <fstream>
#include <functional>
#include <random>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

int failures = 0;

void check(bool ok, const std::string& what) {
  if (!ok) {
    ++failures;
    std::printf("FAIL: %s\n", what.c_str());
  }
}

void test_bounds_match_mpmath(const char* table_path) {
  std::ifstream f(table_path);
  check(f.good(), std::string("open ") + table_path);
  std::string line;
  std::getline(f, line);  // header: old_logp,delta,lower,upper
  double worst = 0;
  int rows = 0;
  while (std::getline(f, line)) {
    std::istringstream s(line);
    std::string field[4];
    for (auto& x : field) std::getline(s, x, ',');
    const double lp = std::stod(field[0]), delta = std::stod(field[1]);
    const double want_lo = std::stod(field[2]), want_hi = std::stod(field[3]);
    bandpo::BoundOptions o;
    o.delta = delta;
    o.ratio_max = INFINITY;
    double lo = 0, hi = 0;
    bandpo::band_bounds_cpu(bandpo::DType::float64, &lp, 1, o, &lo, &hi);
    worst = std::fmax(worst, std::fabs(hi - want_hi) / std::fmax(want_hi, 1.0));
    worst = std::fmax(worst, std::fabs(lo - want_lo) / std::fmax(want_lo, 1e-3));
    ++rows;
  }
  check(rows > 1000, "mpmath table has rows");
  check(worst <= 1e-11, "KL bounds vs mpmath: worst relative error " + std::to_string(worst));
}

struct Batch {
  int64_t rows = 4, cols = 37;
  std::vector<double> logp, old_logp, adv, ref;
  std::vector<uint8_t> mask;

  explicit Batch(unsigned seed) {
    std::mt19937_64 g(seed);
    std::uniform_real_distribution<double> u(1e-3, 1.0);
    std::normal_distribution<double> n(0.0, 1.0);
    const int64_t count = rows * cols;
    for (int64_t i = 0; i < count; ++i) {
      old_logp.push_back(std::log(u(g)));
      logp.push_back(std::fmin(old_logp.back() + 0.4 * n(g), -1e-3));
      adv.push_back(n(g));
      ref.push_back(std::fmin(old_logp.back() + 0.2 * n(g), -1e-3));
      mask.push_back(u(g) > 0.2 ? 1 : 0);
    }
  }

  bandpo::LossInputs inputs(const std::vector<double>& lp) const {
    bandpo::LossInputs in;
    in.dtype = bandpo::DType::float64;
    in.rows = rows;
    in.cols = cols;
    in.logp = lp.data();
    in.old_logp = old_logp.data();
    in.advantages = adv.data();
    in.mask = mask.data();
    in.mask_kind = bandpo::MaskKind::boolean;
    in.ref_logp = ref.data();
    return in;
  }
};

void test_gradient_matches_finite_differences() {
  const Batch b(7);
  for (const char* div : {"kl", "tv", "chi2", "clip"}) {
    for (const char* agg : {"token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"}) {
      bandpo::LossOptions o;
      o.bounds.divergence = bandpo::parse_divergence(div);
      o.agg = bandpo::parse_aggregation(agg);
      o.dual_clip = 3.0;
      o.kl_coef = 0.1;
      std::vector<double> grad(b.logp.size());
      bandpo::band_loss_cpu(b.inputs(b.logp), o, grad.data());
      double worst = 0;
      const double h = 1e-6;
      for (size_t i = 0; i < b.logp.size(); i += 3) {
        std::vector<double> plus = b.logp, minus = b.logp;
        plus[i] += h;
        minus[i] -= h;
        const double fd = (bandpo::band_loss_cpu(b.inputs(plus), o, nullptr).loss -
                           bandpo::band_loss_cpu(b.inputs(minus), o, nullptr).loss) /
                          (2 * h);
        worst = std::fmax(worst, std::fabs(fd - grad[i]));
      }
      check(worst < 1e-7,
            std::string("gradient vs finite differences, ") + div + ", " + agg + ": worst " + std::to_string(worst));
    }
  }
}

void expect_invalid(const std::function<void()>& f, const std::string& needle, const std::string& what) {
  try {
    f();
    check(false, what + ": no exception");
  } catch (const std::invalid_argument& e) {
    check(std::string(e.what()).find(needle) != std::string::npos,
          what + ": message '" + e.what() + "' does not name '" + needle + "'");
  }
}

void test_bad_arguments() {
  Batch b(3);
  const double lp = -1.0;
  double lo, hi;
  bandpo::BoundOptions bad;
  bad.delta = -1;
  expect_invalid([&] { bandpo::band_bounds_cpu(bandpo::DType::float64, &lp, 1, bad, &lo, &hi); }, "delta", "delta < 0");
  bad = bandpo::BoundOptions();
  bad.ratio_max = 0.5;
  expect_invalid([&] { bandpo::band_bounds_cpu(bandpo::DType::float64, &lp, 1, bad, &lo, &hi); }, "ratio_max",
                 "ratio_max < 1");
  expect_invalid([] { bandpo::parse_divergence("hellinger"); }, "divergence", "unknown divergence");
  expect_invalid([] { bandpo::parse_aggregation("mean"); }, "agg", "unknown aggregation");

  bandpo::LossOptions o;
  o.dual_clip = 0.5;
  expect_invalid([&] { bandpo::band_loss_cpu(b.inputs(b.logp), o, nullptr); }, "dual_clip", "dual_clip <= 1");
  o = bandpo::LossOptions();
  b.mask[5] = 1;
  b.logp[5] = NAN;
  expect_invalid([&] { bandpo::band_loss_cpu(b.inputs(b.logp), o, nullptr); }, "logp[5]",
                 "NaN logp at a valid position");
  b.logp[5] = -1;
  b.old_logp[6] = 0.5;
  b.mask[6] = 1;
  expect_invalid([&] { bandpo::band_loss_cpu(b.inputs(b.logp), o, nullptr); }, "old_logp[6]", "old_logp > 0");
  b.old_logp[6] = -1;
  bandpo::LossInputs in = b.inputs(b.logp);
  in.ref_logp = nullptr;
  o.kl_coef = 0.1;
  expect_invalid([&] { bandpo::band_loss_cpu(in, o, nullptr); }, "ref_logp", "kl_coef without ref_logp");
  o.kl_coef = 0;
  in.logp = nullptr;
  expect_invalid([&] { bandpo::band_loss_cpu(in, o, nullptr); }, "null", "null logp");
  b.mask[5] = 0;
  b.logp[5] = NAN;  // masked: allowed
  check(std::isfinite(bandpo::band_loss_cpu(b.inputs(b.logp), o, nullptr).loss), "NaN at a masked position is ignored");
}

}  // namespace

// The CUDA kernels fold a row in one pass (logit_sums_add per 16-byte load in each thread, then logit_sums_merge
// across threads, bandpo/lm_head.h); the CPU takes the max first, then sums (logit_stats_cpu). Both from the
// same header: the device's fold is run here on the host, in the device's order (256 threads striding by loads of
// 8 bf16 or 4 float logits, the row's end padded with -inf as the kernel pads it, then a butterfly over 32 lanes
// and warp 0 over 8 warps), against the CPU on rows with logits of -inf (a masked vocabulary entry: 0 to the
// entropy, whole loads and threads of them too), a NaN and a +inf (NaN out), and far-apart maxima.
template <int kChunk>
void test_device_fold_matches_the_cpu() {
  const int64_t vocab = 5003, rows = 6;  // not a multiple of a load: the last one padded
  std::vector<float> raw(rows * vocab);
  std::mt19937 gen(11);
  std::normal_distribution<float> normal(0.0f, 3.0f);
  for (auto& x : raw) x = normal(gen);
  for (int64_t j = 0; j < vocab; j += 7) raw[1 * vocab + j] = -INFINITY;  // every 7th masked, logit 0 among them
  for (int64_t j = 0; j < vocab; ++j) raw[2 * vocab + j] = j % 9 == 1 ? raw[2 * vocab + j] : -INFINITY;
  raw[3 * vocab + 4000] = NAN;
  raw[4 * vocab + 17] = INFINITY;
  for (int64_t j = 0; j < vocab; ++j) raw[5 * vocab + j] *= 30.0f;  // a spread of hundreds: far-apart maxima
  const std::vector<int64_t> target = {3, 1, 10, 5, 6, 2};
  std::vector<float> logp(rows), entropy(rows);
  bandpo::logit_stats_cpu(raw.data(), bandpo::LogitChunk{rows, vocab, vocab, target.data()}, bandpo::LogitOptions{},
                          logp.data(), entropy.data());
  const bandpo::LogitTransform t = bandpo::make_logit_transform(1.0, 0.0, 1.0);
  constexpr int kThreads = 256, kWarp = 32;
  for (int64_t r = 0; r < rows; ++r) {
    const float* row = raw.data() + r * vocab;
    bandpo::LogitRowSums lane[kThreads];
    for (int th = 0; th < kThreads; ++th) {
      bandpo::LogitRowSums x{-INFINITY, 0.0f, 0.0f};
      for (int64_t i = int64_t(th) * kChunk; i < vocab; i += int64_t(kThreads) * kChunk) {
        float z[kChunk];
        for (int j = 0; j < kChunk; ++j) z[j] = i + j < vocab ? bandpo::logit_z(row[i + j], t) : -INFINITY;
        x = bandpo::logit_sums_add(x, z);
      }
      lane[th] = x;
    }
    bandpo::LogitRowSums warps[kThreads / kWarp];
    for (int w = 0; w < kThreads / kWarp; ++w) {
      bandpo::LogitRowSums* l = lane + w * kWarp;
      for (int offset = kWarp / 2; offset > 0; offset /= 2) {
        bandpo::LogitRowSums next[kWarp];
        for (int k = 0; k < kWarp; ++k) next[k] = bandpo::logit_sums_merge(l[k], l[k ^ offset]);
        for (int k = 0; k < kWarp; ++k) l[k] = next[k];
      }
      warps[w] = l[0];
    }
    bandpo::LogitRowSums total = warps[0];
    for (int w = 1; w < kThreads / kWarp; ++w) total = bandpo::logit_sums_merge(total, warps[w]);
    float dev_logp, dev_entropy;
    bandpo::logit_outputs(total, bandpo::logit_z(row[target[r]], t), dev_logp, dev_entropy);
    const std::string at = "row " + std::to_string(r) + ", loads of " + std::to_string(kChunk);
    if (r == 3 || r == 4) {
      check(std::isnan(dev_logp) && std::isnan(dev_entropy) && std::isnan(logp[r]) && std::isnan(entropy[r]),
            "device fold and CPU give NaN for a NaN or +inf logit, " + at);
      continue;
    }
    check(std::isfinite(dev_logp) && std::isfinite(dev_entropy) && std::isfinite(logp[r]) && std::isfinite(entropy[r]),
          "finite logp and entropy, " + at);
    check(std::fabs(dev_logp - logp[r]) <= 1e-5f * (1.0f + std::fabs(logp[r])), "device fold logp = CPU logp, " + at);
    check(std::fabs(dev_entropy - entropy[r]) <= 1e-5f * (1.0f + entropy[r]),
          "device fold entropy = CPU entropy, " + at);
  }
}

// The error a GPU user with too old a driver gets names the driver needed and the one found.
void test_driver_too_old_message() {
  const std::string m = bandpo::driver_too_old_message(12040, 13000);
  check(m.find("built with CUDA 13.0") != std::string::npos,
        "message names the CUDA the kernels were built with: " + m);
  check(m.find("R580 or newer") != std::string::npos, "message names the driver branch needed: " + m);
  check(m.find("supports CUDA 12.4") != std::string::npos, "message names what the driver supports: " + m);
  check(bandpo::driver_too_old_message(0, 12090).find("R525") != std::string::npos, "CUDA 12.9 needs R525");
  check(bandpo::driver_too_old_message(0, 12090).find("no NVIDIA driver") != std::string::npos, "no driver said");
  check(bandpo::minimum_driver_branch(14000) == 0, "an unknown CUDA major has no branch");
}

int main(int argc, char** argv) {
  if (argc < 2) {
    std::printf("usage: %s tests/data/kl_bounds_mpmath.csv\n", argv[0]);
    return 2;
  }
  check(std::string(bandpo::version()) == BANDPO_VERSION_STRING, "version() == BANDPO_VERSION_STRING");
  test_bounds_match_mpmath(argv[1]);
  test_gradient_matches_finite_differences();
  test_bad_arguments();
  test_driver_too_old_message();
  test_device_fold_matches_the_cpu<8>();
  test_device_fold_matches_the_cpu<4>();
  std::printf("%s (%d failures)\n", failures ? "FAILED" : "passed", failures);
  return failures ? 1 : 0;
}
