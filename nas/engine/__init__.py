"""nas.engine"""
