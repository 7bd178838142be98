#include "services/engine/kv_quant.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <limits>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace kvguard::engine {
namespace {

// Bytes of one fp16 scale plus one fp16 min (per group).
constexpr int64_t kStatBytesPerGroup = 2 * 2;
// A stored scale at or below this marks a constant group. It lies under the
// smallest fp16 subnormal (~6e-8), so in practice it means "scale rounded to 0";
// KIVI has no such guard and would produce NaN codes.
constexpr double kMinScale = 1e-8;

int64_t BytesPerGroup(int64_t group_size, int bits) { return (group_size * bits + 7) / 8; }

absl::Status ValidateSpec(const QuantSpec& spec) {
  if (spec.bits != 2 && spec.bits != 4) {
    return absl::InvalidArgumentError(absl::StrCat("bits must be 2 or 4, got ", spec.bits));
  }
  if (spec.group_size <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("group_size must be positive, got ", spec.group_size));
  }
  return absl::OkStatus();
}

absl::Status ValidateInput(const at::Tensor& x, const char* what) {
  if (!x.defined() || x.dim() != 3) {
    return absl::InvalidArgumentError(absl::StrCat(what, " must be a [kv_heads, T, d] tensor"));
  }
  if (!at::isFloatingType(x.scalar_type())) {
    return absl::InvalidArgumentError(absl::StrCat(what, " must be floating point"));
  }
  if (x.size(0) == 0 || x.size(2) == 0) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": kv_heads and d must be positive"));
  }
  return absl::OkStatus();
}

// Values use groups of G channels, but never more than the head has.
int64_t ValueGroupSize(int64_t d, const QuantSpec& spec) { return std::min(spec.group_size, d); }

// Shifts that place code i of a byte at bits [i*b, (i+1)*b).
at::Tensor ShiftAmounts(int bits, const at::Device& device) {
  return at::arange(0, 8, bits, at::TensorOptions().dtype(at::kByte).device(device));
}

// Codes [..., G] (uint8 in [0, 2^b)) -> uint8 [..., ceil(G*b/8)], first code lowest.
at::Tensor PackGroups(const at::Tensor& codes, int bits) {
  const int64_t per_byte = 8 / bits;
  const int64_t g = codes.size(-1);
  const int64_t nbytes = BytesPerGroup(g, bits);
  at::Tensor padded = at::constant_pad_nd(codes, {0, nbytes * per_byte - g}, 0);
  std::vector<int64_t> sizes = padded.sizes().vec();
  sizes.back() = nbytes;
  sizes.push_back(per_byte);
  at::Tensor shifted =
      at::bitwise_left_shift(padded.reshape(sizes), ShiftAmounts(bits, codes.device()));
  // The shifted codes occupy disjoint bits, so a sum is a bitwise OR and fits a byte.
  return shifted.sum(-1, /*keepdim=*/false, at::kByte);
}

// Inverse of PackGroups: uint8 [..., ceil(G*b/8)] -> uint8 codes [..., G].
at::Tensor UnpackGroups(const at::Tensor& packed, int bits, int64_t g) {
  const at::Tensor mask = at::full({}, (1 << bits) - 1, packed.options());
  at::Tensor parts = at::bitwise_and(
      at::bitwise_right_shift(packed.unsqueeze(-1), ShiftAmounts(bits, packed.device())), mask);
  return parts.flatten(-2).narrow(-1, 0, g);
}

struct GroupStats {
  at::Tensor codes;  // uint8 [..., n_groups, bytes per group]
  at::Tensor scale;  // fp16 [..., n_groups]
  at::Tensor min;    // fp16 [..., n_groups]
};

// Min-max quantizes float32 groups [..., n_groups, G].
GroupStats QuantizeGroups(const at::Tensor& groups, int bits) {
  const double qmax = (1 << bits) - 1;
  const at::Tensor lo = groups.amin(-1);
  const at::Tensor hi = groups.amax(-1);
  GroupStats out;
  out.min = lo.to(at::kHalf);
  out.scale = ((hi - lo) / qmax).to(at::kHalf);
  // Codes come from the stored fp16 stats, so Dequantize sees the same grid
  // they were chosen on.
  const at::Tensor min32 = out.min.to(at::kFloat).unsqueeze(-1);
  at::Tensor scale32 = out.scale.to(at::kFloat);
  // Dividing by +inf makes every code of a constant group 0 (x' = min).
  scale32.masked_fill_(scale32 <= kMinScale, std::numeric_limits<float>::infinity());
  // clamp, then round, as KIVI does (same result: the bounds are integers).
  at::Tensor q = ((groups - min32) / scale32.unsqueeze(-1)).clamp(0, qmax).round();
  out.codes = PackGroups(q.to(at::kByte), bits);
  return out;
}

// Reconstructs float32 groups [A, B, n_groups, G] from packed rows [A, B, n_groups * bpg].
at::Tensor DequantizeGroups(const PackedTensor& p) {
  const int64_t n_groups = p.scale.size(2);
  const int64_t bpg = BytesPerGroup(p.group_size, p.bits);
  at::Tensor packed = p.codes.reshape({p.codes.size(0), p.codes.size(1), n_groups, bpg});
  at::Tensor q = UnpackGroups(packed, p.bits, p.group_size).to(at::kFloat);
  return q * p.scale.to(at::kFloat).unsqueeze(-1) + p.min.to(at::kFloat).unsqueeze(-1);
}

// Flattens GroupStats into a PackedTensor with rows [A, B, n_groups * bpg].
PackedTensor Assemble(GroupStats stats, const QuantSpec& spec, int64_t group_size,
                      const at::Tensor& input, PackedTensor::Axis axis) {
  PackedTensor p;
  p.codes = stats.codes.flatten(-2);
  p.scale = std::move(stats.scale);
  p.min = std::move(stats.min);
  p.bits = spec.bits;
  p.group_size = group_size;
  p.shape = input.sizes().vec();
  p.axis = axis;
  return p;
}

// The token axis of the packed tensors: keys are [H, d, ...], values [H, T, ...].
int64_t TokenDim(const PackedTensor& p) { return p.axis == PackedTensor::kPerChannel ? 2 : 1; }

absl::Status CheckConcatenable(const PackedTensor& a, const PackedTensor& b) {
  if (a.axis != b.axis || a.bits != b.bits || a.group_size != b.group_size) {
    return absl::InvalidArgumentError("Concat: axis, bits and group size must match");
  }
  if (a.shape.size() != 3 || b.shape.size() != 3 || a.shape[0] != b.shape[0] ||
      a.shape[2] != b.shape[2]) {
    return absl::InvalidArgumentError("Concat: kv_heads and head_dim must match");
  }
  if (a.codes.device() != b.codes.device()) {
    return absl::InvalidArgumentError("Concat: both sides must be on the same device");
  }
  return absl::OkStatus();
}

absl::Status CheckIndex(const PackedTensor& p, const at::Tensor& index) {
  if (p.axis != PackedTensor::kPerToken) {
    return absl::InvalidArgumentError(
        "SelectTokens: per-channel (key) groups span tokens and cannot be gathered");
  }
  if (!index.defined() || index.dim() != 2 || index.size(0) != p.shape[0] ||
      !at::isIntegralType(index.scalar_type(), /*includeBool=*/false)) {
    return absl::InvalidArgumentError("SelectTokens: index must be integer [kv_heads, n]");
  }
  if (index.numel() == 0) return absl::OkStatus();
  // Checked here because an out-of-range gather is a device-side assert on GPU.
  const int64_t lo = index.min().item<int64_t>();
  const int64_t hi = index.max().item<int64_t>();
  if (lo < 0 || hi >= p.shape[1]) {
    return absl::InvalidArgumentError(
        absl::StrCat("SelectTokens: index out of range [0, ", p.shape[1], ")"));
  }
  return absl::OkStatus();
}

// Gathers rows [H, T, C] -> [H, n, C] with a per-head token index [H, n].
at::Tensor GatherTokens(const at::Tensor& rows, const at::Tensor& index) {
  return at::gather(rows, 1,
                    index.unsqueeze(-1).expand({index.size(0), index.size(1), rows.size(2)}));
}

}  // namespace

int64_t PackedTensor::Bytes() const {
  int64_t bytes = 0;
  for (const at::Tensor* t : {&codes, &scale, &min}) {
    if (t->defined()) bytes += t->numel() * static_cast<int64_t>(t->element_size());
  }
  return bytes;
}

absl::StatusOr<PackedTensor> QuantizeKeys(const at::Tensor& keys, const QuantSpec& spec) {
  if (absl::Status s = ValidateSpec(spec); !s.ok()) return s;
  if (absl::Status s = ValidateInput(keys, "keys"); !s.ok()) return s;
  const int64_t h = keys.size(0), t = keys.size(1), d = keys.size(2), g = spec.group_size;
  if (t % g != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("keys: T=", t, " is not a multiple of group_size=", g));
  }
  // Per channel: group G consecutive tokens of each channel ([H, d, T/G, G]).
  at::Tensor groups = keys.to(at::kFloat).transpose(1, 2).reshape({h, d, t / g, g});
  return Assemble(QuantizeGroups(groups, spec.bits), spec, g, keys, PackedTensor::kPerChannel);
}

absl::StatusOr<PackedTensor> QuantizeValues(const at::Tensor& values, const QuantSpec& spec) {
  if (absl::Status s = ValidateSpec(spec); !s.ok()) return s;
  if (absl::Status s = ValidateInput(values, "values"); !s.ok()) return s;
  const int64_t h = values.size(0), t = values.size(1), d = values.size(2);
  const int64_t g = ValueGroupSize(d, spec);
  if (d % g != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("values: d=", d, " is not a multiple of group_size=", g));
  }
  // Per token: group G consecutive channels of each token ([H, T, d/G, G]).
  at::Tensor groups = values.to(at::kFloat).reshape({h, t, d / g, g});
  return Assemble(QuantizeGroups(groups, spec.bits), spec, g, values, PackedTensor::kPerToken);
}

at::Tensor Dequantize(const PackedTensor& packed, at::ScalarType out_dtype) {
  if (packed.empty()) return {};
  const int64_t h = packed.shape[0], t = packed.shape[1], d = packed.shape[2];
  at::Tensor groups = DequantizeGroups(packed);
  at::Tensor out = packed.axis == PackedTensor::kPerChannel
                       ? groups.reshape({h, d, t}).transpose(1, 2)
                       : groups.reshape({h, t, d});
  return out.to(out_dtype).contiguous();
}

int64_t PackedBytes(int64_t kv_heads, int64_t T, int64_t d, const QuantSpec& spec, bool keys) {
  if (!ValidateSpec(spec).ok() || kv_heads <= 0 || d <= 0 || T < 0) return -1;
  const int64_t g = keys ? spec.group_size : ValueGroupSize(d, spec);
  const int64_t grouped_len = keys ? T : d;  // the axis groups are cut from
  const int64_t other_len = keys ? d : T;
  if (grouped_len % g != 0) return -1;
  const int64_t groups = kv_heads * other_len * (grouped_len / g);
  return groups * (BytesPerGroup(g, spec.bits) + kStatBytesPerGroup);
}

absl::StatusOr<PackedTensor> Concat(const PackedTensor& a, const PackedTensor& b) {
  if (a.empty()) return b;
  if (b.empty()) return a;
  if (absl::Status s = CheckConcatenable(a, b); !s.ok()) return s;
  const int64_t dim = TokenDim(a);
  PackedTensor out = a;
  // Groups are byte-aligned, so the packed rows concatenate without re-packing.
  out.codes = at::cat({a.codes, b.codes}, dim);
  out.scale = at::cat({a.scale, b.scale}, dim);
  out.min = at::cat({a.min, b.min}, dim);
  out.shape[1] = a.shape[1] + b.shape[1];
  return out;
}

absl::StatusOr<PackedTensor> SelectTokens(const PackedTensor& packed,
                                          const at::Tensor& index_per_head) {
  if (packed.empty()) return absl::InvalidArgumentError("SelectTokens: empty PackedTensor");
  if (absl::Status s = CheckIndex(packed, index_per_head); !s.ok()) return s;
  const at::Tensor index = index_per_head.to(packed.codes.device(), at::kLong);
  PackedTensor out = packed;
  out.codes = GatherTokens(packed.codes, index);
  out.scale = GatherTokens(packed.scale, index);
  out.min = GatherTokens(packed.min, index);
  out.shape[1] = index.size(1);
  return out;
}

}  // namespace kvguard::engine
