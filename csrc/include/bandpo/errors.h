// What the core library throws (its C++ API; the C ABI turns each into a status, bandpo.h).
//   std::invalid_argument  a bad option, size, pointer or dtype, or a bad value at a valid position; the
//                          message names the argument (and the flat index for values)
//   bandpo::out_of_memory  a workspace the call needs could not be allocated; the message gives its size
//                          and the shape that asked for it
//   std::runtime_error     anything else (a failed CUDA launch, say)
#pragma once

#include <stdexcept>
#include <string>

namespace bandpo {

// Not std::bad_alloc: that carries no message, and "std::bad_alloc" tells a caller nothing about which
// size was too large.
class out_of_memory : public std::runtime_error {
 public:
  explicit out_of_memory(const std::string& message) : std::runtime_error(message) {}
};

}  // namespace bandpo
