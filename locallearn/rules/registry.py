from ..registry import Registry

RULES: Registry = Registry("method")             # method name -> its preset (a Rule class)
OBJECTIVES: Registry = Registry("objective")     # --objective NAME -> an Objective class
COUPLINGS: Registry = Registry("coupling")       # --coupling NAME -> a Coupling class
