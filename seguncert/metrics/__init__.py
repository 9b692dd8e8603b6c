"""seguncert.metrics"""
