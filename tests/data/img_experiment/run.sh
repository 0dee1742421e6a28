#!/bin/sh
exec python3 experiment.py
