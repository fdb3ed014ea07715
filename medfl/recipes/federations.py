"""The client names of each federation, as its preparation writes them and its jobs expect them."""

PROSTATE = ("client_I2CVB", "client_MSD", "client_NCI_ISBI_3T")
SAML_PROSTATE = ("client_BIDMC", "client_HK", "client_I2CVB", "client_ISBI", "client_ISBI_1_5", "client_UCL")
CAMELYON17 = ("hospital1", "hospital2", "hospital3", "hospital4", "hospital5")
NUCLEI = ("brightfield_purple", "confocal_green", "dapi_blue", "widefield_grey")
DERMOSCOPY = ("clientA", "clientB", "clientC", "clientD")
ISIC2019 = ("center_0", "center_1", "center_2", "center_3", "center_4", "center_5")
MEDMNIST = ("site-1", "site-2", "site-3")
MEDMNIST_SCALEOUT = tuple(f"site-{i}" for i in range(1, 101))  # prepare_medmnist.py --num_clients 100
