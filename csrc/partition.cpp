// Layer partition over pipeline stages by dynamic programming: the hot loop of hetero's planner.
//
// Given P stages in pipeline order (each on its own device type / TP degree) and L layers, choose boundaries
// 0 = b_0 < b_1 < ... < b_P = L (stage s holds layers [b_s, b_{s+1})) minimising
//
//     weight_max * max_s T_s  +  weight_sum * sum_s T_s
//
// (for 1F1B with m micro-batches: (m - 1) * slowest stage + one pass through all stages), where T_s is the
// stage's forward+backward time for one micro-batch: the sum of its per-layer times on its device, without
// activation recomputation when the stage fits in memory that way, else with it (slower), else the span is
// infeasible. Memory of stage s holding [i, j) (the predictor's formula, hetero/predictor/memory.py):
//
//     no recompute:  state[i:j] + inflight_s * act[i:j]    + max(worst[i:j]) + out[j-1] + overhead_s
//     recompute:     state[i:j] + inflight_s * act_rc[i:j] + max(worst[i:j]) + out[j-1] + overhead_s
//
// (worst: one layer's saved activations: the backward's gradient buffers, or the layer being recomputed)
//
// The DP keeps, for every (stage, boundary), the Pareto front of (max, sum) over prefixes, so the result is
// exact for the objective above (tests/test_planner_partition.py checks it against exhaustive enumeration).
// Entries that cannot beat ``bound`` are dropped (branch and bound across planner candidates): a prefix's final
// objective is at least weight_max * max(its slowest stage, the mean over the remaining stages of the remaining
// layers at their fastest) + weight_sum * (its sum + the remaining layers at their fastest).
//
// Built by setup.py as hetero._csrc; Python side: hetero/autoparallel/partition.py.

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <optional>
#include <stdexcept>
#include <vector>

namespace py = pybind11;
using Arr = py::array_t<double, py::array::c_style | py::array::forcecast>;

namespace {

struct Entry {
  double mx;       // slowest stage so far
  double sm;       // sum of stage times so far
  int32_t prev_j;  // boundary where this stage starts
  int32_t prev_k;  // index into the front at (stage - 1, prev_j)
  bool rc;         // this stage recomputes activations
};

struct Result {
  double objective;
  double max_stage;
  double sum_stage;
  std::vector<int> bounds;        // P + 1 boundaries
  std::vector<bool> recompute;    // per stage
  std::vector<double> stage_time; // per stage
};

const double* rows(const Arr& a, py::ssize_t P, py::ssize_t L, const char* name) {
  if (a.ndim() != 2 || a.shape(0) != P || a.shape(1) != L)
    throw std::invalid_argument(std::string(name) + " must have shape (stages, layers)");
  return a.data();
}

const double* vec(const Arr& a, py::ssize_t P, const char* name) {
  if (a.ndim() != 1 || a.shape(0) != P)
    throw std::invalid_argument(std::string(name) + " must have shape (stages,)");
  return a.data();
}

void prune(std::vector<Entry>& cand, size_t cap) {
  // keep the Pareto front: sort by max ascending, keep strictly decreasing sums
  std::sort(cand.begin(), cand.end(), [](const Entry& a, const Entry& b) {
    return a.mx < b.mx || (a.mx == b.mx && a.sm < b.sm);
  });
  std::vector<Entry> out;
  out.reserve(cand.size());
  double best = std::numeric_limits<double>::infinity();
  for (const Entry& e : cand) {
    if (e.sm < best) {
      out.push_back(e);
      best = e.sm;
    }
  }
  if (cap > 0 && out.size() > cap) {  // thin evenly, keeping both ends (only for very long pipelines)
    std::vector<Entry> thin;
    thin.reserve(cap);
    for (size_t k = 0; k < cap; ++k) thin.push_back(out[k * (out.size() - 1) / (cap - 1)]);
    out.swap(thin);
  }
  cand.swap(out);
}

}  // namespace

std::optional<Result> partition(const Arr& time0, const Arr& time_rc, const Arr& state, const Arr& act,
                                const Arr& act_rc, const Arr& worst_rc, const Arr& out, const Arr& inflight,
                                const Arr& overhead, const Arr& capacity, double weight_max, double weight_sum,
                                bool allow_recompute, double bound, int front_cap) {
  const py::ssize_t P = time0.ndim() == 2 ? time0.shape(0) : 0;
  const py::ssize_t L = time0.ndim() == 2 ? time0.shape(1) : 0;
  if (P < 1 || L < 1) throw std::invalid_argument("time0 must have shape (stages, layers) with both >= 1");
  if (P > L) return std::nullopt;  // every stage needs at least one layer
  const double* t0 = rows(time0, P, L, "time0");
  const double* t1 = rows(time_rc, P, L, "time_rc");
  const double* st = rows(state, P, L, "state");
  const double* ac = rows(act, P, L, "act");
  const double* ar = rows(act_rc, P, L, "act_rc");
  const double* wr = rows(worst_rc, P, L, "worst_rc");
  const double* ob = rows(out, P, L, "out");
  const double* inf = vec(inflight, P, "inflight");
  const double* ovh = vec(overhead, P, "overhead");
  const double* cap = vec(capacity, P, "capacity");

  py::gil_scoped_release release;
  // prefix sums per stage row: pre[s][j] = sum_{l < j} x[s][l]
  auto prefix = [&](const double* x) {
    std::vector<double> p(static_cast<size_t>(P) * (L + 1), 0.0);
    for (py::ssize_t s = 0; s < P; ++s)
      for (py::ssize_t l = 0; l < L; ++l) p[s * (L + 1) + l + 1] = p[s * (L + 1) + l] + x[s * L + l];
    return p;
  };
  const auto p0 = prefix(t0), p1 = prefix(t1), ps = prefix(st), pa = prefix(ac), pr = prefix(ar);
  // suffix[l]: a lower bound on the time of layers [l, L) on any later stages (fastest stage per layer)
  std::vector<double> suffix(L + 1, 0.0);
  for (py::ssize_t l = L - 1; l >= 0; --l) {
    double best = t0[l];
    for (py::ssize_t s = 1; s < P; ++s) best = std::min(best, t0[s * L + l]);
    suffix[l] = suffix[l + 1] + best;
  }
  // rest_max(s, j): a lower bound on the slowest of stages s+1 .. P-1 when they hold layers [j, L): at least
  // their mean (suffix[j] spread over them); 0 for the last stage
  auto rest_max = [&](py::ssize_t s, py::ssize_t j) {
    return s + 1 < P ? suffix[j] / static_cast<double>(P - 1 - s) : 0.0;
  };
  const double inf_d = std::numeric_limits<double>::infinity();
  const size_t capn = front_cap > 1 ? static_cast<size_t>(front_cap) : 0;
  auto objective = [&](double mx, double sm) { return weight_max * mx + weight_sum * sm; };

  // fronts[s][j]: prefixes whose stages 0..s cover layers [0, j)
  std::vector<std::vector<std::vector<Entry>>> fronts(P, std::vector<std::vector<Entry>>(L + 1));
  std::vector<Entry> cand;
  for (py::ssize_t s = 0; s < P; ++s) {
    const size_t row = static_cast<size_t>(s) * (L + 1);
    const py::ssize_t jmin = s + 1, jmax = L - (P - 1 - s);
    for (py::ssize_t j = jmin; j <= jmax; ++j) {
      cand.clear();
      double worst = 0.0;
      const double fixed = ob[s * L + j - 1] + ovh[s];
      const double rest = rest_max(s, j);
      for (py::ssize_t i = j - 1; i >= s; --i) {  // span [i, j), growing leftwards
        worst = std::max(worst, wr[s * L + i]);
        const double state_b = ps[row + j] - ps[row + i];
        const double mem0 = state_b + inf[s] * (pa[row + j] - pa[row + i]) + worst + fixed;
        double t;
        bool rc = false;
        if (mem0 <= cap[s]) {
          t = p0[row + j] - p0[row + i];
        } else if (allow_recompute &&
                   state_b + inf[s] * (pr[row + j] - pr[row + i]) + worst + fixed <= cap[s]) {
          t = p1[row + j] - p1[row + i];
          rc = true;
        } else {
          break;  // memory only grows as the span grows
        }
        // the span only grows leftwards, so once it alone cannot beat the bound, stop
        if (objective(std::max(t, rest), t + suffix[j]) >= bound) break;
        if (s == 0) {
          if (i != 0) continue;
          cand.push_back(Entry{t, t, 0, -1, rc});
        } else {
          const auto& prev = fronts[s - 1][i];
          for (size_t k = 0; k < prev.size(); ++k) {
            const double mx = std::max(prev[k].mx, t), sm = prev[k].sm + t;
            if (objective(std::max(mx, rest), sm + suffix[j]) < bound)
              cand.push_back(Entry{mx, sm, static_cast<int32_t>(i), static_cast<int32_t>(k), rc});
          }
        }
      }
      if (!cand.empty()) {
        prune(cand, capn);
        fronts[s][j] = std::move(cand);
        cand = std::vector<Entry>();
      }
    }
  }
  const auto& last = fronts[P - 1][L];
  if (last.empty()) return std::nullopt;
  size_t best = 0;
  double best_obj = inf_d;
  for (size_t k = 0; k < last.size(); ++k) {
    const double o = objective(last[k].mx, last[k].sm);
    if (o < best_obj) {
      best_obj = o;
      best = k;
    }
  }
  Result r;
  r.objective = best_obj;
  r.max_stage = last[best].mx;
  r.sum_stage = last[best].sm;
  r.bounds.assign(P + 1, 0);
  r.recompute.assign(P, false);
  r.stage_time.assign(P, 0.0);
  r.bounds[P] = static_cast<int>(L);
  py::ssize_t j = L;
  size_t k = best;
  for (py::ssize_t s = P - 1; s >= 0; --s) {
    const Entry& e = fronts[s][j][k];
    const py::ssize_t i = e.prev_j;
    r.bounds[s] = static_cast<int>(i);
    r.recompute[s] = e.rc;
    const size_t row = static_cast<size_t>(s) * (L + 1);
    r.stage_time[s] = e.rc ? p1[row + j] - p1[row + i] : p0[row + j] - p0[row + i];
    j = i;
    k = e.prev_k < 0 ? 0 : static_cast<size_t>(e.prev_k);
  }
  return r;
}

void bind_pipeline(py::module_& m);  // csrc/pipeline.cpp

PYBIND11_MODULE(_csrc, m) {
  m.doc() = "hetero C++ hot loops: the planner's layer-partition DP (csrc/partition.cpp) and the pipeline "
            "schedule simulation (csrc/pipeline.cpp)";
  bind_pipeline(m);
  py::class_<Result>(m, "PartitionResult")
      .def_readonly("objective", &Result::objective)
      .def_readonly("max_stage", &Result::max_stage)
      .def_readonly("sum_stage", &Result::sum_stage)
      .def_readonly("bounds", &Result::bounds)
      .def_readonly("recompute", &Result::recompute)
      .def_readonly("stage_time", &Result::stage_time);
  m.def("partition", &partition, py::arg("time0"), py::arg("time_rc"), py::arg("state"), py::arg("act"),
        py::arg("act_rc"), py::arg("worst_rc"), py::arg("out"), py::arg("inflight"), py::arg("overhead"),
        py::arg("capacity"), py::arg("weight_max"), py::arg("weight_sum"), py::arg("allow_recompute") = true,
        py::arg("bound") = std::numeric_limits<double>::infinity(), py::arg("front_cap") = 0,
        "Exact layer partition minimising weight_max * max stage time + weight_sum * sum of stage times under "
        "per-stage memory capacity; returns a PartitionResult or None when no partition fits (or beats bound). "
        "All 2-D arrays have shape (stages, layers); inflight, overhead, capacity have shape (stages,).");
}
