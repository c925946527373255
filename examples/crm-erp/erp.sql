-- The ERP (MariaDB): customers as accounting keeps them.
CREATE TABLE customers (
  customer_no INT AUTO_INCREMENT PRIMARY KEY,
  first_name VARCHAR(100) NOT NULL,
  last_name VARCHAR(100),
  user_email VARCHAR(200),
  phone_number VARCHAR(50),
  address_line VARCHAR(300),                       -- 'street, postal_code city'
  country_name VARCHAR(100),                       -- 'Germany'
  ship_pref ENUM('STD','EXP','PICK') NOT NULL DEFAULT 'STD',
  payment_terms VARCHAR(10) NOT NULL DEFAULT 'NET30',
  credit_limit_cents BIGINT NOT NULL DEFAULT 0,
  notes TEXT,
  is_active TINYINT(1) NOT NULL DEFAULT 1,
  modified DATETIME NOT NULL DEFAULT CURRENT_TIMESTAMP ON UPDATE CURRENT_TIMESTAMP
) DEFAULT CHARSET = utf8mb4;
INSERT INTO customers (first_name, last_name, user_email, phone_number, address_line, country_name, ship_pref, payment_terms, credit_limit_cents, notes) VALUES
  ('Grace', 'Hopper', 'grace@navy.example', '+1 202 555 0142', '1 Cobol Way, 22201 Arlington', 'United States', 'STD', 'NET60', 2500000, 'Key account'),
  ('Emmy', 'Noether', 'emmy@goettingen.example', '+49 551 0000', 'Bunsenstr. 3, 37073 Göttingen', 'Germany', 'EXP', 'DUE', 50000, NULL);
