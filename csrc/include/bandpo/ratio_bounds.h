// The two ratio bounds of a token, as every divergence's math returns them (kl.h, bounds.h).
#pragma once

namespace bandpo {

template <class C>
struct RatioBounds {
  C lower;
  C upper;
};

}  // namespace bandpo
