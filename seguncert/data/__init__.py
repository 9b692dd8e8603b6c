"""seguncert.data"""
