"""seguncert.models"""
