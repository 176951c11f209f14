"""The mathematics: an IWAE whose weights may be Gaussian random variables.

ops      the likelihood, the weight KL and low-precision products, with hand-written backward passes
layers   the random linear layer: weight means, sigma = softplus(rho), per-sample or per-batch weight draws
model    the IWAE (encoder, decoder, prior) and its log importance weights log p(x, z) - log q(z | x)
rng      the noise's standard normals: Philox4x32-10 on every CPU thread, keyed from torch's stream
native   the C++ kernels (philox.cpp for rng, elementwise.cpp for ops), built on first use
bounds   the IWAE bound L_k and its gradient estimators (plain, STL, DReG)

Nothing here reads files, parses options or imports anything above it in the package.
"""
