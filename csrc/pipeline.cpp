// Pipeline schedule simulation (GPipe, 1F1B, interleaved 1F1B over uneven stages): the C++ twin of
// hetero/predictor/pipeline.py's ``simulate`` without the per-block record, for the planner's hot path (it
// re-simulates its best candidates, with hundreds of micro-batches on large clusters).
//
// Semantics are those of the Python reference (tests/test_pipeline_csrc.py checks them against it): stage s runs
// its blocks in the order ``stage_order`` prescribes; a block starts when the stage is free and its input has
// arrived: F(i) of virtual stage vs needs F(i) of vs - 1 plus the p2p transfer, B(i) needs F(i) of vs and B(i) of
// vs + 1 plus the transfer. Virtual stage vs = chunk * p + s; the transfer after the last stage's chunk c to the
// first stage's chunk c + 1 costs the mean p2p time.

#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <stdexcept>
#include <string>
#include <tuple>
#include <vector>

namespace py = pybind11;

namespace {

struct Op {
  bool fwd;
  int micro;
  int chunk;
};

std::vector<Op> stage_order(const std::string& schedule, int p, int s, int m, int v) {
  std::vector<Op> order;
  if (schedule == "gpipe") {
    for (int i = 0; i < m; ++i) order.push_back({true, i, 0});
    for (int i = 0; i < m; ++i) order.push_back({false, i, 0});
    return order;
  }
  if (schedule == "1f1b" || (schedule == "interleaved_1f1b" && v == 1)) {
    const int warm = std::min(p - s - 1, m);
    for (int i = 0; i < warm; ++i) order.push_back({true, i, 0});
    int f = warm, b = 0;
    while (f < m) {
      order.push_back({true, f++, 0});
      order.push_back({false, b++, 0});
    }
    for (int i = b; i < m; ++i) order.push_back({false, i, 0});
    return order;
  }
  if (schedule == "interleaved_1f1b") {
    const int total = m * v;
    auto fwd = [&](int k) {
      const int group = k / (p * v), r = k % (p * v);
      return Op{true, group * p + r % p, r / p};
    };
    auto bwd = [&](int k) {
      const int group = k / (p * v), r = k % (p * v);
      return Op{false, group * p + r % p, v - 1 - r / p};
    };
    const int warm = m >= p ? std::min(total, 2 * (p - s - 1) + (v - 1) * p) : total;
    for (int k = 0; k < warm; ++k) order.push_back(fwd(k));
    int f = warm, b = 0;
    while (f < total) {
      order.push_back(fwd(f++));
      order.push_back(bwd(b++));
    }
    for (int k = b; k < total; ++k) order.push_back(bwd(k));
    return order;
  }
  throw std::invalid_argument("unknown schedule '" + schedule + "' (gpipe, 1f1b, interleaved_1f1b)");
}

// (makespan, busy per stage, finish per stage)
std::tuple<double, std::vector<double>, std::vector<double>> simulate(const std::vector<double>& fwd,
                                                                      const std::vector<double>& bwd, int m,
                                                                      const std::string& schedule,
                                                                      const std::vector<double>& p2p,
                                                                      int virtual_stages) {
  const int p = static_cast<int>(fwd.size());
  if (p < 1 || static_cast<int>(bwd.size()) != p) throw std::invalid_argument("fwd and bwd need one entry per stage");
  if (m < 1) throw std::invalid_argument("need at least one micro-batch");
  if (static_cast<int>(p2p.size()) != p - 1) throw std::invalid_argument("p2p needs one entry per stage boundary");
  const int v = schedule == "interleaved_1f1b" ? virtual_stages : 1;
  const int nv = p * v;
  double wrap = 0.0;
  for (double c : p2p) wrap += c;
  if (!p2p.empty()) wrap /= static_cast<double>(p2p.size());
  auto link = [&](int vs) { return vs % p < p - 1 ? p2p[vs % p] : wrap; };

  std::vector<std::vector<Op>> orders(p);
  size_t remaining = 0;
  for (int s = 0; s < p; ++s) {
    orders[s] = stage_order(schedule, p, s, m, v);
    remaining += orders[s].size();
  }
  const double unset = -1.0;
  std::vector<double> done_f(static_cast<size_t>(nv) * m, unset), done_b(static_cast<size_t>(nv) * m, unset);
  auto at = [m](int vs, int i) { return static_cast<size_t>(vs) * m + i; };
  std::vector<double> free(p, 0.0), busy(p, 0.0);
  std::vector<size_t> ptr(p, 0);
  while (remaining) {
    bool progressed = false;
    for (int s = 0; s < p; ++s) {
      while (ptr[s] < orders[s].size()) {
        const Op& op = orders[s][ptr[s]];
        const int vs = op.chunk * p + s;
        double ready, dur;
        if (op.fwd) {
          if (vs == 0) {
            ready = 0.0;
          } else if (done_f[at(vs - 1, op.micro)] != unset) {
            ready = done_f[at(vs - 1, op.micro)] + link(vs - 1);
          } else {
            break;
          }
          dur = fwd[s] / v;
        } else {
          if (done_f[at(vs, op.micro)] == unset) break;
          if (vs == nv - 1) {
            ready = done_f[at(vs, op.micro)];
          } else if (done_b[at(vs + 1, op.micro)] != unset) {
            ready = done_b[at(vs + 1, op.micro)] + link(vs);
          } else {
            break;
          }
          dur = bwd[s] / v;
        }
        const double end = std::max(free[s], ready) + dur;
        (op.fwd ? done_f : done_b)[at(vs, op.micro)] = end;
        free[s] = end;
        busy[s] += dur;
        ++ptr[s];
        --remaining;
        progressed = true;
      }
    }
    if (!progressed)
      throw std::runtime_error("schedule '" + schedule + "' deadlocked (p=" + std::to_string(p) +
                               ", m=" + std::to_string(m) + ", v=" + std::to_string(v) + ")");
  }
  return {*std::max_element(free.begin(), free.end()), busy, free};
}

}  // namespace

void bind_pipeline(py::module_& m) {
  m.def("simulate", &simulate, py::arg("fwd"), py::arg("bwd"), py::arg("m"), py::arg("schedule"), py::arg("p2p"),
        py::arg("virtual_stages") = 1,
        "Pipeline schedule simulation (see hetero/predictor/pipeline.py): (makespan, busy per stage, finish per "
        "stage).");
}
