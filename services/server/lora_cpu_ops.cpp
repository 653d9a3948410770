// Multi-LoRA shrink/expand for vLLM's CPU backend without per-token weight copies.
//
// Each token reads its adapter's rows in place (weights[slot] is a view), so nothing of
// size tokens x rank x hidden is gathered or converted. Numerics follow vLLM's torch ops:
//   shrink: out[t, r] = float(scale) * sum_d float(x[t, d]) * float(a[s, r, d])   (fp32)
//   expand: delta = scalar_t(sum_r float(scalar_t(in[t, r])) * float(b[s, o, r]))  (fp32 sum)
//           y[t, off + o] = scalar_t(float(y[t, off + o]) + float(delta))
// Tokens whose slot is negative (no adapter) get no delta: y is left as it is.
// The fp32 sums that vLLM leaves to BLAS (the shrink; the expand of an fp32 model) go
// through ATen's mv on the token's rows, so they match bit for bit.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <type_traits>
#include <vector>

namespace {

// A (slots, rows, cols) view of a stacked LoRA weight, (slots, 1, rows, cols) allowed.
struct Stack {
  const void* data;
  int64_t slot_stride;
  int64_t rows;
  int64_t cols;
};

Stack as_stack(const at::Tensor& w) {
  at::Tensor v = w.dim() == 4 ? w.select(1, 0) : w;
  TORCH_CHECK(v.dim() == 3, "LoRA weights must be (slots, [1,] rows, cols)");
  TORCH_CHECK(v.stride(2) == 1 && v.stride(1) == v.size(2),
              "LoRA weight rows must be contiguous");
  return {v.data_ptr(), v.stride(0), v.size(1), v.size(2)};
}

template <typename scalar_t>
inline void load_row(const scalar_t* src, int64_t n, float* dst) {
  for (int64_t d = 0; d < n; ++d) {
    dst[d] = static_cast<float>(src[d]);
  }
}

// out (rows) = w (rows, n) @ x (n) in fp32 through ATen's mv: the BLAS gemv that vLLM's
// batched einsum runs per token, so the fp32 sums come out bit for bit the same. w is
// converted to fp32 in `scratch` (rows * n floats) unless it is fp32 already.
template <typename scalar_t>
inline void shrink_rows(const float* x, const scalar_t* w, int64_t rows, int64_t n,
                        float* out, float* scratch) {
  const float* wf = scratch;
  if constexpr (std::is_same_v<scalar_t, float>) {
    wf = w;
  } else {
    load_row(w, rows * n, scratch);
  }
  const auto fp32 = at::TensorOptions().dtype(at::kFloat);
  at::Tensor result = at::from_blob(out, {rows}, fp32);
  at::mv_out(result, at::from_blob(const_cast<float*>(wf), {rows, n}, fp32),
             at::from_blob(const_cast<float*>(x), {n}, fp32));
}

// The order in which vLLM's bf16 einsum adds the rank's products (they are exact in fp32,
// so only this order and the final rounding decide the result). ATen hands a bf16 bmm to
// oneDNN when tokens * rank * n exceeds 16^3 (mkldnn/Matmul.cpp, checksize); with the
// AVX512-BF16 dot-product instruction, oneDNN adds in pairs, the odd term of each pair
// first. Smaller products, and fp16, run ATen's own loop: rank order.
constexpr int64_t kOneDnnMinSize = 16 * 16 * 16;

template <typename scalar_t>
bool pairs_odd_first(int64_t tokens, int64_t rank, int64_t n) {
#if defined(__AVX512BF16__)
  return std::is_same_v<scalar_t, c10::BFloat16> && rank % 2 == 0 &&
         tokens * rank * n > kOneDnnMinSize;
#else
  return false;
#endif
}

// delta[o] = sum_r in[r] * float(b[o, r]) in fp32 for b (n, kRank), in vLLM's order.
template <typename scalar_t, int64_t kRank, bool kPairs>
inline void expand_fixed(const float* in, const scalar_t* b, int64_t n, float* delta) {
  for (int64_t o = 0; o < n; ++o) {
    const scalar_t* row = b + o * kRank;
    float acc = 0.f;
    if constexpr (kPairs) {
      for (int64_t r = 0; r < kRank; r += 2) {
        acc += in[r + 1] * static_cast<float>(row[r + 1]);
        acc += in[r] * static_cast<float>(row[r]);
      }
    } else {
      for (int64_t r = 0; r < kRank; ++r) {
        acc += in[r] * static_cast<float>(row[r]);
      }
    }
    delta[o] = acc;
  }
}

template <typename scalar_t>
inline void expand_any(const float* in, const scalar_t* b, int64_t rank, int64_t n,
                       bool pairs, float* delta) {
  for (int64_t o = 0; o < n; ++o) {
    const scalar_t* row = b + o * rank;
    float acc = 0.f;
    int64_t r = 0;
    for (; pairs && r + 1 < rank; r += 2) {
      acc += in[r + 1] * static_cast<float>(row[r + 1]);
      acc += in[r] * static_cast<float>(row[r]);
    }
    for (; r < rank; ++r) {
      acc += in[r] * static_cast<float>(row[r]);
    }
    delta[o] = acc;
  }
}

// y[0:n] op= scalar_t(b (n, rank) @ in (rank)); in holds scalar_t-rounded values as floats,
// delta is scratch of n floats.
template <typename scalar_t>
inline void expand_row(const float* in, const scalar_t* b, int64_t rank, scalar_t* y,
                       int64_t n, bool add, bool pairs, float* delta) {
  if constexpr (std::is_same_v<scalar_t, float>) {  // vLLM's fp32 einsum: a gemv per token
    const auto fp32 = at::TensorOptions().dtype(at::kFloat);
    at::Tensor result = at::from_blob(delta, {n}, fp32);
    at::mv_out(result, at::from_blob(const_cast<float*>(b), {n, rank}, fp32),
               at::from_blob(const_cast<float*>(in), {rank}, fp32));
  } else {  // bf16 / fp16 einsum: fp32 sums of exact products, rounded once
    if (rank == 8 && pairs) {
      expand_fixed<scalar_t, 8, true>(in, b, n, delta);
    } else if (rank == 8) {
      expand_fixed<scalar_t, 8, false>(in, b, n, delta);
    } else {
      expand_any(in, b, rank, n, pairs, delta);
    }
  }
  for (int64_t o = 0; o < n; ++o) {
    const scalar_t d = static_cast<scalar_t>(delta[o]);
    y[o] = add ? static_cast<scalar_t>(static_cast<float>(y[o]) + static_cast<float>(d)) : d;
  }
}

void check_tokens(const at::Tensor& t, int64_t tokens, const char* name) {
  TORCH_CHECK(t.dim() == 2 && t.size(0) >= tokens && t.stride(1) == 1, name,
              " must be (tokens, n) with contiguous rows");
}

// y[:, offsets[i]:+n_i] += expand_i(shrink_i(x)) for every slice i (add_lora_linear).
template <typename scalar_t>
void linear_impl(at::Tensor& y, const at::Tensor& x, const std::vector<Stack>& a,
                 const std::vector<Stack>& b, const int64_t* idx, int64_t tokens, float scale,
                 const std::vector<int64_t>& offsets, const std::vector<const bool*>& live) {
  const int64_t hidden = x.size(1);
  const int64_t max_rank = a.empty() ? 0 : (*std::max_element(
      a.begin(), a.end(), [](const Stack& l, const Stack& r) { return l.rows < r.rows; })).rows;
  at::parallel_for(0, tokens, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> xf(hidden), buf(max_rank), delta(y.size(1)), scratch(max_rank * hidden);
    for (int64_t t = begin; t < end; ++t) {
      const int64_t s = idx[t];
      if (s < 0) continue;  // no adapter: no delta
      load_row(x.data_ptr<scalar_t>() + t * x.stride(0), hidden, xf.data());
      for (size_t i = 0; i < a.size(); ++i) {
        if (live[i] != nullptr && !live[i][s]) continue;  // this slot's slice is zero
        const auto* wa = static_cast<const scalar_t*>(a[i].data) + s * a[i].slot_stride;
        shrink_rows(xf.data(), wa, a[i].rows, hidden, buf.data(), scratch.data());
        for (int64_t r = 0; r < a[i].rows; ++r) {
          buf[r] = static_cast<float>(static_cast<scalar_t>(scale * buf[r]));
        }
        const auto* wb = static_cast<const scalar_t*>(b[i].data) + s * b[i].slot_stride;
        expand_row(buf.data(), wb, b[i].cols,
                   y.data_ptr<scalar_t>() + t * y.stride(0) + offsets[i], b[i].rows, true,
                   pairs_odd_first<scalar_t>(tokens, b[i].cols, b[i].rows), delta.data());
      }
    }
  });
}

void lora_linear(at::Tensor y, const at::Tensor& x, at::TensorList lora_a, at::TensorList lora_b,
                 const at::Tensor& indices, double scale, at::IntArrayRef slices,
                 at::TensorList live) {
  const int64_t tokens = indices.size(0);
  check_tokens(x, tokens, "x");
  check_tokens(y, tokens, "y");
  TORCH_CHECK(lora_a.size() == lora_b.size() && lora_a.size() == slices.size() &&
              (live.empty() || live.size() == slices.size()), "one a, b, size (live) per slice");
  TORCH_CHECK(indices.scalar_type() == at::kLong && indices.is_contiguous(), "int64 indices");
  TORCH_CHECK(x.scalar_type() == y.scalar_type(), "x and y must share a dtype");
  std::vector<Stack> a, b;
  std::vector<int64_t> offsets;
  std::vector<const bool*> flags;
  int64_t offset = 0;
  for (size_t i = 0; i < slices.size(); ++i) {
    TORCH_CHECK(lora_a[i].scalar_type() == x.scalar_type() &&
                lora_b[i].scalar_type() == x.scalar_type(), "weights must have x's dtype");
    a.push_back(as_stack(lora_a[i]));
    b.push_back(as_stack(lora_b[i]));
    TORCH_CHECK(a[i].cols == x.size(1) && b[i].cols == a[i].rows && b[i].rows == slices[i],
                "slice ", i, ": shapes do not chain");
    offsets.push_back(offset);
    offset += slices[i];
    if (!live.empty()) {
      TORCH_CHECK(live[i].scalar_type() == at::kBool && live[i].is_contiguous() &&
                  live[i].numel() >= lora_a[i].size(0), "live: (slots,) bool per slice");
    }
    flags.push_back(live.empty() ? nullptr : live[i].data_ptr<bool>());
  }
  TORCH_CHECK(offset <= y.size(1), "slices exceed y");
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "lora_linear", [&] {
    linear_impl<scalar_t>(y, x, a, b, indices.data_ptr<int64_t>(), tokens,
                          static_cast<float>(scale), offsets, flags);
  });
}

// out[t, :rank] = scale * x[t] @ w[s].T in fp32 (bgmv_shrink); 0 where s < 0.
void shrink(const at::Tensor& x, const at::Tensor& w, at::Tensor out, const at::Tensor& indices,
            double scale) {
  const int64_t tokens = indices.size(0);
  check_tokens(x, tokens, "x");
  check_tokens(out, tokens, "out");
  TORCH_CHECK(out.scalar_type() == at::kFloat, "shrink writes fp32");
  TORCH_CHECK(indices.scalar_type() == at::kLong && indices.is_contiguous(), "int64 indices");
  TORCH_CHECK(w.scalar_type() == x.scalar_type(), "weights must have x's dtype");
  const Stack st = as_stack(w);
  TORCH_CHECK(st.cols == x.size(1) && st.rows <= out.size(1), "shrink shapes");
  const int64_t* idx = indices.data_ptr<int64_t>();
  const float sc = static_cast<float>(scale);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "shrink", [&] {
    at::parallel_for(0, tokens, 1, [&](int64_t begin, int64_t end) {
      std::vector<float> xf(st.cols), scratch(st.rows * st.cols), sums(st.rows);
      for (int64_t t = begin; t < end; ++t) {
        float* o = out.data_ptr<float>() + t * out.stride(0);
        if (idx[t] < 0) {
          std::fill(o, o + st.rows, 0.f);
          continue;
        }
        load_row(x.data_ptr<scalar_t>() + t * x.stride(0), st.cols, xf.data());
        const auto* ws = static_cast<const scalar_t*>(st.data) + idx[t] * st.slot_stride;
        shrink_rows(xf.data(), ws, st.rows, st.cols, sums.data(), scratch.data());
        for (int64_t r = 0; r < st.rows; ++r) {
          o[r] = sc * sums[r];
        }
      }
    });
  });
}

// y[t, offset:offset+n] (+)= scalar_t(scalar_t(x[t]) @ w[s].T) (bgmv_expand(_slice)), x fp32
// or of y's dtype; rows with s < 0 are left alone when adding, zeroed otherwise.
void expand(const at::Tensor& x, const at::Tensor& w, at::Tensor y, const at::Tensor& indices,
            int64_t offset, int64_t size, bool add) {
  const int64_t tokens = indices.size(0);
  check_tokens(x, tokens, "x");
  check_tokens(y, tokens, "y");
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == y.scalar_type(),
              "expand reads fp32 or y's dtype");
  TORCH_CHECK(indices.scalar_type() == at::kLong && indices.is_contiguous(), "int64 indices");
  TORCH_CHECK(w.scalar_type() == y.scalar_type(), "weights must have y's dtype");
  const Stack st = as_stack(w);
  const int64_t n = std::min(size, st.rows);
  TORCH_CHECK(st.cols <= x.size(1) && offset + n <= y.size(1), "expand shapes");
  const int64_t* idx = indices.data_ptr<int64_t>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, y.scalar_type(), "expand", [&] {
    at::parallel_for(0, tokens, 1, [&](int64_t begin, int64_t end) {
      std::vector<float> in(st.cols), delta(n);
      for (int64_t t = begin; t < end; ++t) {
        scalar_t* row = y.data_ptr<scalar_t>() + t * y.stride(0) + offset;
        if (idx[t] < 0) {
          if (!add) std::fill(row, row + n, static_cast<scalar_t>(0.f));
          continue;
        }
        if (x.scalar_type() == at::kFloat) {  // the fp32 shrink buffer, cast as vLLM does
          const float* xt = x.data_ptr<float>() + t * x.stride(0);
          for (int64_t r = 0; r < st.cols; ++r) {
            in[r] = static_cast<float>(static_cast<scalar_t>(xt[r]));
          }
        } else {  // already in y's dtype (the embedding's LoRA A rows)
          load_row(x.data_ptr<scalar_t>() + t * x.stride(0), st.cols, in.data());
        }
        const auto* ws = static_cast<const scalar_t*>(st.data) + idx[t] * st.slot_stride;
        expand_row(in.data(), ws, st.cols, row, n, add,
                   pairs_odd_first<scalar_t>(tokens, st.cols, st.rows), delta.data());
      }
    });
  });
}

}  // namespace

TORCH_LIBRARY(personalize_lora, m) {
  m.def("lora_linear(Tensor(a!) y, Tensor x, Tensor[] lora_a, Tensor[] lora_b, Tensor indices, "
        "float scale, int[] slices, Tensor[] live) -> ()");
  m.def("shrink(Tensor x, Tensor w, Tensor(a!) out, Tensor indices, float scale) -> ()");
  m.def("expand(Tensor x, Tensor w, Tensor(a!) y, Tensor indices, int offset, int size, "
        "bool add) -> ()");
  m.impl("lora_linear", c10::DispatchKey::CPU, &lora_linear);
  m.impl("shrink", c10::DispatchKey::CPU, &shrink);
  m.impl("expand", c10::DispatchKey::CPU, &expand);
}
