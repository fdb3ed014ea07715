"""FedAvg (McMahan et al., AISTATS 2017): the baseline every method is compared with."""
