"""seguncert.uncertainty"""
