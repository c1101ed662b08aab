"""nas.data"""
