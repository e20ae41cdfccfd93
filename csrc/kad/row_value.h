// λ / budget or T of each batch row (docs/design.md §1.3, §2.5): f32 [B] on the
// logits' device, or one value for every row.  The Python API hands a float over as
// the value, with no tensor: a device tensor of it would cost a fill launch per call.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>
#include <c10/util/Optional.h>

#include <cstdint>

#include "host_device.h"

namespace kad {

struct RowValue {
  const float* values;  // [B], or null: every row takes `value`
  float value;

  KAD_HOST_DEVICE float of(int64_t b) const { return values != nullptr ? values[b] : value; }
};

// The op arguments `Tensor? name, float name_value`: the tensor (checked), else the value.
inline RowValue row_value(const c10::optional<at::Tensor>& values, double value, const at::Tensor& logits,
                          const char* name) {
  if (!values.has_value()) return {nullptr, static_cast<float>(value)};
  const int64_t batch = logits.size(0);
  TORCH_CHECK(values->device() == logits.device() && values->scalar_type() == at::kFloat && values->is_contiguous() &&
                  values->numel() == batch,
              "kad: ", name, " must be a contiguous f32 [", batch, "] tensor on the logits' device");
  return {values->data_ptr<float>(), 0.0f};
}

// The rule's parameter (λ, μ, budget) and the temperature of each batch row.
struct RowParams {
  RowValue param, temperature;
};

inline RowParams row_params(const c10::optional<at::Tensor>& param, double param_value,
                            const c10::optional<at::Tensor>& temperature, double temperature_value,
                            const at::Tensor& logits) {
  return {row_value(param, param_value, logits, "param"),
          row_value(temperature, temperature_value, logits, "temperature")};
}

}  // namespace kad
