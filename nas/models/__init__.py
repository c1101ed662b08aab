"""nas.models"""
