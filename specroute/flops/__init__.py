"""FLOPs, in one place (docs/DESIGN.md, "FLOP accounting"; docs/STYLE.md, "FLOPs").

- :mod:`specroute.flops.analytic`: the closed-form cost model — parameter counts and multiply-adds (MACs)
  per training step of a spec, by component, and the proxy against the full-only step.
- :mod:`specroute.flops.counters`: measured MACs of real code with fvcore (forward) and
  ``FlopCounterMode`` (forward and backward), conventions aligned, uncounted ops reported.
- :mod:`specroute.flops.accounting`: what ``specroute flops`` reports — parameters, FLOPs by component,
  the proxy under every reading and the paper's figures beside ours.

:mod:`specroute.verify.flops` checks the analytic model against the counters. MACs and FLOPs are named
apart and never mixed: FLOPs = 2 x MACs.
"""
