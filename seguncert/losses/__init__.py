"""seguncert.losses"""
