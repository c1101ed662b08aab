"""nas.evaluation"""
