// What the core library throws (its C++ API; the C ABI turns each into a status, bandpo.h).
//   std::invalid_argument  a bad option, size, shape or pointer, or a bad value at a valid position; the
//                          message names the argument (and the flat index for values)
//   bandpo::dtype_error    (an invalid_argument) an argument of a dtype it may not have; Python's TypeError
//   bandpo::out_of_memory  a workspace the call needs could not be allocated; the message gives its size
//                          and the shape that asked for it
//   std::runtime_error     anything else (a failed CUDA launch, say)
#pragma once

#include <stdexcept>
#include <string>

namespace bandpo {

// Not std::bad_alloc: that carries no message, and "std::bad_alloc" tells a caller nothing about which
// size was too large.
// Derived from std::invalid_argument, so that code catching bad arguments catches it too; the faces that tell
// the two apart (Python: TypeError against ValueError; the C ABI: BANDPO_WRONG_DTYPE) catch it first.
class dtype_error : public std::invalid_argument {
 public:
  explicit dtype_error(const std::string& message) : std::invalid_argument(message) {}
};

class out_of_memory : public std::runtime_error {
 public:
  explicit out_of_memory(const std::string& message) : std::runtime_error(message) {}
};

}  // namespace bandpo
