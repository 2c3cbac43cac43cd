// A small GRPO/PPO trainer in plain C++17 whose policy loss and its gradient come from libbandpo.
//
// Task: a contextual bandit with 32 contexts and 16 arms; in each context one arm pays 1, the others 0
// (chance: 1/16). Policy: softmax over a table of logits per context, started from random logits with a
// wide spread, so the paying arm is often a rare choice at first. Each step samples G = 8 arms for each
// of 16 contexts, normalises rewards within each group (GRPO), then runs 4 PPO epochs on that batch
// against the sampling policy's log-probabilities: libbandpo gives the loss and d loss / d logp per sample,
// and the chain rule through the softmax (d logp_a / d logit_j = [j == a] - pi_j) gives the logits'
// gradient, applied with Adam.
//
//   cpp_trainer [--method kl|tv|chi2|clip] [--steps N] [--seed S] [--check MIN_REWARD]
#include <bandpo/cpu.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

constexpr int kContexts = 32, kArms = 16, kBatchContexts = 16, kGroup = 8, kEpochs = 4;

struct Policy {
  std::vector<double> logits, m, v;  // [kContexts * kArms], Adam moments
  int t = 0;

  explicit Policy(std::mt19937_64& g) : logits(kContexts * kArms), m(logits.size()), v(logits.size()) {
    std::normal_distribution<double> n(0.0, 2.0);
    for (double& x : logits) x = n(g);
  }

  std::vector<double> probs(int c) const {
    const double* z = &logits[c * kArms];
    const double top = *std::max_element(z, z + kArms);
    std::vector<double> p(kArms);
    double sum = 0;
    for (int j = 0; j < kArms; ++j) sum += (p[j] = std::exp(z[j] - top));
    for (double& x : p) x /= sum;
    return p;
  }

  void adam_step(const std::vector<double>& grad, double lr) {
    ++t;
    const double b1 = 0.9, b2 = 0.999;
    for (size_t i = 0; i < logits.size(); ++i) {
      m[i] = b1 * m[i] + (1 - b1) * grad[i];
      v[i] = b2 * v[i] + (1 - b2) * grad[i] * grad[i];
      const double mh = m[i] / (1 - std::pow(b1, t)), vh = v[i] / (1 - std::pow(b2, t));
      logits[i] -= lr * mh / (std::sqrt(vh) + 1e-8);
    }
  }
};

double entropy(const std::vector<double>& p) {
  double h = 0;
  for (double x : p) h -= x > 0 ? x * std::log(x) : 0.0;
  return h;
}

}  // namespace

int main(int argc, char** argv) {
  std::string method = "kl";
  int steps = 150;
  unsigned seed = 1;
  double check = -1;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (i + 1 >= argc) {
      std::fprintf(stderr, "missing value after %s\n", a.c_str());
      return 2;
    }
    if (a == "--method")
      method = argv[++i];
    else if (a == "--steps")
      steps = std::atoi(argv[++i]);
    else if (a == "--seed")
      seed = static_cast<unsigned>(std::atoi(argv[++i]));
    else if (a == "--check")
      check = std::atof(argv[++i]);
    else {
      std::fprintf(stderr, "unknown argument %s\n", a.c_str());
      return 2;
    }
  }

  bandpo::LossOptions options;
  try {
    options.bounds.divergence = bandpo::parse_divergence(method);
    options.bounds.eps_high = method == "clip" ? 0.2 : options.bounds.eps_high;  // clip: PPO's 0.2/0.2
    bandpo::validate(options);
  } catch (const std::invalid_argument& e) {
    std::fprintf(stderr, "%s\n", e.what());
    return 2;
  }

  std::mt19937_64 g(seed);
  std::vector<int> best(kContexts);
  for (int& b : best) b = std::uniform_int_distribution<int>(0, kArms - 1)(g);
  Policy policy(g);
  std::printf("bandpo %s, method %s: step, mean reward, mean policy entropy (nats)\n", bandpo::version(),
              method.c_str());

  const int n = kBatchContexts * kGroup;
  double recent = 0;
  int recent_count = 0;
  for (int step = 0; step < steps; ++step) {
    std::vector<int> ctx(n), arm(n);
    std::vector<double> old_logp(n), reward(n), adv(n);
    double reward_sum = 0, entropy_sum = 0;
    for (int b = 0; b < kBatchContexts; ++b) {
      const int c = std::uniform_int_distribution<int>(0, kContexts - 1)(g);
      const std::vector<double> p = policy.probs(c);
      entropy_sum += entropy(p);
      std::discrete_distribution<int> pick(p.begin(), p.end());
      double mean = 0, sq = 0;
      for (int k = 0; k < kGroup; ++k) {
        const int i = b * kGroup + k;
        ctx[i] = c;
        arm[i] = pick(g);
        old_logp[i] = std::log(p[arm[i]]);
        reward[i] = arm[i] == best[c] ? 1.0 : 0.0;
        mean += reward[i] / kGroup;
      }
      for (int k = 0; k < kGroup; ++k) sq += std::pow(reward[b * kGroup + k] - mean, 2) / kGroup;
      for (int k = 0; k < kGroup; ++k) adv[b * kGroup + k] = (reward[b * kGroup + k] - mean) / (std::sqrt(sq) + 1e-6);
      for (int k = 0; k < kGroup; ++k) reward_sum += reward[b * kGroup + k];
    }

    for (int epoch = 0; epoch < kEpochs; ++epoch) {
      std::vector<double> logp(n), grad_logp(n);
      for (int i = 0; i < n; ++i) logp[i] = std::log(policy.probs(ctx[i])[arm[i]]);
      bandpo::LossInputs in;
      in.dtype = bandpo::DType::float64;
      in.rows = n;  // every sample is a one-token response
      in.cols = 1;
      in.logp = logp.data();
      in.old_logp = old_logp.data();
      in.advantages = adv.data();
      bandpo::band_loss_cpu(in, options, grad_logp.data());
      std::vector<double> grad(policy.logits.size(), 0.0);
      for (int i = 0; i < n; ++i) {
        const std::vector<double> p = policy.probs(ctx[i]);
        for (int j = 0; j < kArms; ++j) grad[ctx[i] * kArms + j] += grad_logp[i] * ((j == arm[i]) - p[j]);
      }
      policy.adam_step(grad, 0.05);
    }

    const double mean_reward = reward_sum / n;
    if (step >= steps - 20) {
      recent += mean_reward;
      ++recent_count;
    }
    if (step % 10 == 0 || step == steps - 1)
      std::printf("%4d  %.3f  %.3f\n", step, mean_reward, entropy_sum / kBatchContexts);
  }
  const double final_reward = recent / std::max(1, recent_count);
  std::printf("mean reward over the last %d steps: %.3f (chance %.3f)\n", recent_count, final_reward, 1.0 / kArms);
  if (check >= 0 && final_reward < check) {
    std::printf("FAILED: below %.3f\n", check);
    return 1;
  }
  return 0;
}
