"""The mathematics: an IWAE whose weights may be Gaussian random variables.

ops      element-wise functions and the noise path's matrix products (hand-written for speed, tested exactly)
layers   the random linear layer: weight means, sigma = softplus(rho), per-sample or per-batch weight draws
model    the IWAE (encoder, decoder, prior) and its log importance weights log p(x, z) - log q(z | x)
bounds   the IWAE bound L_k, its gradient estimators (plain, STL, DReG) and the weights' KL term

Nothing here reads files, parses options or imports anything above it in the package.
"""
