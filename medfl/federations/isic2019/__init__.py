"""Fed-ISIC2019 (FLamby's centres) as FedMAS uses it: eight classes, the ImageNet-initialised ResNet baseline."""
