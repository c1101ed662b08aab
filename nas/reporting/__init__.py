"""nas.reporting"""
