"""The influence machinery behind the influence method and behind every proxy's epsilon.

- ``estimate``: the Eq. 2 estimate of Yang et al. (ICLR 2023), S_i = (1/n) H^{-1} grad
  L(z_i), for a softmax head refitted to its optimum on fixed features (the refit, the
  Hessian, per-example gradients, Cholesky / CG / LiSSA solves);
- ``solvers``: the discrete selections over S (Eq. 4 with class quotas, Eq. 3 under an
  epsilon budget);
- ``head``: ``RefitHead``, the scoring run's head refitted once and what is measured
  with it (S, epsilon, per-example loss and gradient norms), with a memory guard;
- ``cache``: ``ArrayCache``, the verified on-disk cache of the head, H's factor and S.

``estimate`` and ``solvers`` are plain functions of arrays: they need no scoring run and
no dataset. Nothing here imports ``nasproxy.proxies``; the methods there read it. The
user-facing account of the method and its options is in docs/methods.md.
"""
