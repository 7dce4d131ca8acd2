"""Reporting: the HTML report, its figures and the Pareto fronts."""
