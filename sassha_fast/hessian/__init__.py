"""The Hessian-diagonal estimate: the estimator interface, Hutchinson with the authors'
Rademacher stream, finite differences, and the opt-in curvature floor."""
