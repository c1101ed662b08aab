"""nas.objectives"""
